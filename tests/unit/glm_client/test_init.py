"""The glm_client package (glm_client/src/glm_client/__init__.py): importing it pulls in none of
the server's stack."""

from __future__ import annotations

import subprocess
import sys


def test_import_glm_client_imports_neither_vllm_nor_the_server_stack():
    code = ("import sys, glm_client, chat_formats, chat_formats.glm4; "
            "print(sorted(m for m in ('vllm', 'transformers', 'torch', 'ray', 'pydantic', 'starlette', 'numpy') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
