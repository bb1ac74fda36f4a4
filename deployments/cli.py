"""glm-serve: validate a Serve config file before anything starts, then serve it.

`serve run` finds a bad config only in the Serve controller, after Ray has started, and
then waits on. `glm-serve check` finds it in a second, one line per bad field, starting no
Ray and importing no vLLM; `glm-serve run` checks, then becomes `serve run`.
`glm-serve config-docs` renders docs/configuration.md from deployments/config/;
`glm-serve hash-key` prints the digest of an API key for the tenants file."""

import argparse
import ipaddress
import os
import sys
from pathlib import Path
from typing import Any, Iterator, get_args

import yaml
from pydantic import BaseModel, ValidationError

from deployments.config import AppConfig, is_builder
from deployments.config import docs as config_docs
from deployments.config.base import PROXY_CALLBACK, PROXY_CALLBACK_ENV
from deployments.config.router import moved_keys
from deployments.tenants.tenants_file import hash_key, load_tenants, parse_tenants


def _path(loc: tuple) -> str:
    """``('applications', 0, 'args')`` -> ``applications[0].args``."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def _field_loc(loc: tuple, data: Any) -> tuple:
    """Cut pydantic's union-member tags (``int``, ``literal['auto']``), which follow a
    scalar of the input, off an error's loc: a union's branches make one line, not two."""
    for i, part in enumerate(loc):
        if not isinstance(data, (dict, list)):
            return loc[:i]
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return loc[: i + 1]  # a missing field: its name ends the loc
    return loc


def _lines(error: ValidationError, data: Any, prefix: tuple = ()) -> list[str]:
    """One ``path: message`` line per field, however many errors pydantic has for it."""
    fields: dict[str, list[str]] = {}
    for item in error.errors():
        msgs = fields.setdefault(_path(prefix + _field_loc(item["loc"], data)), [])
        msgs += [item["msg"]] if item["msg"] not in msgs else []
    return [f"{path}: {' or '.join(msgs)}" if path else " or ".join(msgs) for path, msgs in fields.items()]


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as ``Optional[List[X]]``, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next(filter(None, map(_submodel, get_args(annotation))), None)


def _unknown_keys(model: type[BaseModel], data: Any, loc: tuple = ()) -> Iterator[tuple]:
    """Locs of keys Serve drops without a word: most Serve models ignore unknown keys (so
    older Serve takes newer configs), and a misspelt ``proxy_locaton`` would deploy the
    default unnoticed. This project pins Ray: every key must mean something to it."""
    for key, value in data.items() if isinstance(data, dict) else []:
        field = model.model_fields.get(key)
        if field is None:
            if model.model_config.get("extra") != "forbid":  # else pydantic reported it already
                yield (*loc, key)
        elif sub := _submodel(field.annotation):
            for i, item in enumerate(value) if isinstance(value, list) else [(None, value)]:
                yield from _unknown_keys(sub, item, (*loc, key) if i is None else (*loc, key, i))


def _load_yaml(text: str) -> tuple[Any, str | None]:
    try:
        return yaml.safe_load(text), None
    except yaml.YAMLError as e:  # not str(e): it spans lines and quotes the source
        mark = getattr(e, "problem_mark", None)
        return None, f"invalid YAML{f' at line {mark.line + 1}' if mark else ''}: {getattr(e, 'problem', None) or e}"


def check_file(path: str) -> tuple[list[str], list[str], int]:
    """Validate a Serve config file with Serve's schema, and our apps' ``args`` with AppConfig.
    A KubeRay ``RayService`` manifest is checked by its ``spec.serveConfigV2``.
    Returns (error lines, warning lines, number of applications), lines without the file name."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        return [f"cannot read it: {e.strerror}"], [], 0
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError:
        documents = []
    services = [d for d in documents if isinstance(d, dict) and d.get("kind") == "RayService"]
    if services:
        errors, warnings, apps = [], [], 0
        for service in services:
            e, w, n = check_rayservice(service)
            errors, warnings, apps = errors + e, warnings + w, apps + n
        if not any(isinstance(d, dict) and d.get("kind") == "NetworkPolicy" for d in documents):
            warnings.append("no NetworkPolicy beside the RayService: Ray's dashboard, GCS and client ports are "
                            "open to every pod of the Kubernetes cluster (docs/operations.md)")
        return errors, warnings, apps
    data, error = _load_yaml(text)
    if error:
        return [error], [], 0
    if isinstance(data, dict) and "tenants" in data and "applications" not in data:
        return check_tenants(text, path)
    return check_config(data)


def check_tenants(text: str, path: str) -> tuple[list[str], list[str], int]:
    """:func:`check_file` for a tenants file (``router.auth.tenants_file``): the count is of tenants."""
    try:
        tenants = parse_tenants(text, path)
    except ValueError as e:
        return [line.removeprefix(f"{path}: ") for line in str(e).splitlines()], [], 0
    return [], [], len(tenants.tenants)


def check_rayservice(service: dict) -> tuple[list[str], list[str], int]:
    """:func:`check_file` for one KubeRay ``RayService``: its ``spec.serveConfigV2``, and
    Ray's token authentication, which must be on: without it anyone who reaches the
    dashboard submits a job, runs any code on the cluster and reads the API keys."""
    spec = service.get("spec") or {}
    errors: list[str] = []
    cluster = spec.get("rayClusterConfig") or {}
    mode = (cluster.get("authOptions") or {}).get("mode")
    if mode != "token":
        errors.append(f"spec.rayClusterConfig.authOptions.mode: {mode!r}, not 'token': Ray's token "
                      "authentication is off, so anyone who reaches the dashboard runs code on the cluster "
                      "(KubeRay >= 1.5.1, Ray >= 2.52)")
    serve_config = spec.get("serveConfigV2")
    if not isinstance(serve_config, str):
        return errors + ["spec.serveConfigV2: a RayService needs its Serve config here, as a string"], [], 0
    data, error = _load_yaml(serve_config)
    if error:
        return errors + [f"spec.serveConfigV2: {error}"], [], 0
    config_errors, warnings, apps = check_config(data)
    return errors + [f"spec.serveConfigV2: {e}" for e in config_errors], warnings, apps


def check_config(data: Any) -> tuple[list[str], list[str], int]:
    """:func:`check_file` for a Serve config already read into ``data``."""
    from ray.serve.schema import ServeDeploySchema  # here, so `--help` stays instant; starts no Ray

    if not isinstance(data, dict):
        return ["not a Serve config: the file must be a mapping with `applications`"], [], 0
    errors: list[str] = []
    try:
        ServeDeploySchema.model_validate(data)
    except ValidationError as e:
        errors += _lines(e, data)
    errors += [f"{_path(loc)}: Extra inputs are not permitted" for loc in _unknown_keys(ServeDeploySchema, data)]
    warnings: list[str] = []
    apps = data["applications"] if isinstance(data.get("applications"), list) else []
    for i, app in enumerate(apps):
        if not isinstance(app, dict) or not is_builder(app.get("import_path")):
            continue
        args = app.get("args") or {}
        warnings += [f"applications[{i}].args.{old}: still read, but its place is now {new}"
                     for old, new in moved_keys(args.get("router") if isinstance(args, dict) else None)]
        try:
            config = AppConfig.model_validate(args)
        except ValidationError as e:
            errors += _lines(e, args, ("applications", i, "args"))
            continue
        model = config.model.model
        host = str(((data.get("http_options") or {}).get("host")) or "127.0.0.1")
        if not _loopback(host) and not config.router.auth.has_keys and not config.router.auth.allow_unauthenticated:
            errors.append(f"applications[{i}].args.router.auth: http_options.host {host!r} is not loopback and no "
                          "key source is set (api_keys_env, api_keys_file or tenants_file), so anyone who reaches "
                          "the port may call the API; set one, or router.auth.allow_unauthenticated: true")
        tenants_file = config.router.auth.tenants_file
        if tenants_file is not None:
            where = f"applications[{i}].args.router.auth.tenants_file"
            if os.path.exists(tenants_file):
                try:
                    load_tenants(tenants_file)
                except ValueError as e:
                    errors += [f"{where}: {line}" for line in str(e).splitlines()]
            else:
                warnings.append(f"{where}: {tenants_file!r} does not exist here (fine only if every router "
                                "replica's node has it)")
        # Only a warning: `serve run --address` may target a cluster whose nodes have the path.
        if not os.path.isabs(model) and not os.path.exists(model):
            warnings.append(f"applications[{i}].args.model.model: {model!r} does not exist under {os.getcwd()} "
                            "(fine only if every Ray node, or a model hub, has it)")
    return errors, warnings, len(apps)


def _loopback(host: str) -> bool:
    """Whether ``host`` (Serve's ``http_options.host``) listens on loopback only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name that may resolve anywhere


def _install_proxy_gate() -> None:
    """Ask the Ray that `serve run` starts to put glm-serve's admission gate in its HTTP
    proxy (deployments/proxy_gate.py). Ray reads the variable when a node's proxy starts,
    so it takes effect on a cluster `serve run` starts, not on one it joins (`--address`)."""
    current = os.environ.get(PROXY_CALLBACK_ENV)
    if current is None:
        os.environ[PROXY_CALLBACK_ENV] = PROXY_CALLBACK
    elif current != PROXY_CALLBACK:
        print(f"glm-serve: {PROXY_CALLBACK_ENV}={current!r} is your own proxy callback, so the proxy gate is not "
              f"installed; add {PROXY_CALLBACK}() to the middlewares it returns to keep fast refusals", file=sys.stderr)


def config_docs_command(write: str | None, check: str | None) -> int:
    """``glm-serve config-docs``: print docs/configuration.md as the models render it, write
    it to ``write``, or compare it with ``check`` (exit 1, naming the command to run, when
    that file is stale). Exit 1 too when the models cannot be rendered (a field without a
    description)."""
    try:
        text = config_docs.render()
    except config_docs.ConfigDocsError as e:
        print(f"glm-serve config-docs: {e}", file=sys.stderr)
        return 1
    if check is not None:
        try:
            current = Path(check).read_text(encoding="utf-8")
        except OSError as e:
            current = None
            print(f"{check}: cannot read it: {e.strerror}", file=sys.stderr)
        if current != text:
            print(f"{check} is stale: deployments/config/ has changed since it was generated; run "
                  f"`{config_docs.COMMAND}` (glm-serve config-docs --write {check}) and commit it", file=sys.stderr)
            return 1
        print(f"{check}: up to date")
    elif write is not None:
        Path(write).write_text(text, encoding="utf-8")
        print(f"wrote {write}")
    else:
        sys.stdout.write(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``glm-serve`` and ``python -m deployments.cli``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="glm-serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="validate config files and tenants files; exit 2, naming each bad field "
                                     "(CI, `serve deploy`)")
    c.add_argument("configs", nargs="+", metavar="CONFIG",
                   help="Serve config file, e.g. config/serve.yaml, or a tenants file (router.auth.tenants_file)")
    r = sub.add_parser("run", help="check CONFIG, then exec `serve run CONFIG [SERVE_ARGS...]`")
    r.add_argument("config", metavar="CONFIG", help="Serve config file, e.g. config/serve-cpu.yaml")
    r.add_argument("serve_args", nargs=argparse.REMAINDER, metavar="SERVE_ARGS",
                   help="passed on to `serve run` as they are, e.g. --address auto")
    d = sub.add_parser("config-docs", help="print docs/configuration.md as rendered from deployments/config/")
    mode = d.add_mutually_exclusive_group()
    mode.add_argument("--write", metavar="PATH", help="write it to PATH instead, e.g. docs/configuration.md")
    mode.add_argument("--check", metavar="PATH", help="exit 1 when PATH differs from it (CI: a stale copy)")
    h = sub.add_parser("hash-key", help="print the SHA-256 digest of an API key, for the tenants file")
    h.add_argument("--stdin", action="store_true", help="read the key from standard input (kept out of "
                                                        "the shell's history)")
    h.add_argument("key", nargs="?", help="the key; omit it with --stdin")
    args = parser.parse_args(argv)
    if args.command == "hash-key":
        key = sys.stdin.readline().strip() if args.stdin else (args.key or "")
        if not key:
            print("glm-serve hash-key: give a key, or --stdin and the key on standard input", file=sys.stderr)
            return 2
        print(hash_key(key))
        return 0
    if args.command == "config-docs":
        return config_docs_command(args.write, args.check)
    failed = False
    for path in args.configs if args.command == "check" else [args.config]:
        errors, warnings, apps = check_file(path)
        for line in [f"warning: {w}" for w in warnings] + errors:
            print(f"{path}: {line}", file=sys.stderr)
        if not errors:
            print(f"{path}: ok ({apps} applications)")
        failed = failed or bool(errors)
    if failed or args.command == "check":
        return 2 if failed else 0
    _install_proxy_gate()
    # The `serve` of this interpreter's environment (sys.executable unresolved: the venv's bin),
    # else whichever is on PATH (execvp searches it for a bare name).
    serve = Path(sys.executable).parent / "serve"
    sys.stdout.flush()  # execvp drops whatever Python still buffers
    try:
        os.execvp(str(serve) if os.access(serve, os.X_OK) else "serve", ["serve", "run", args.config, *args.serve_args])
    except FileNotFoundError:
        print("glm-serve: no `serve` next to Python or on PATH; install ray[serve]", file=sys.stderr)
    return 127  # reached only when there is no `serve`: execvp replaces this process


if __name__ == "__main__":
    sys.exit(main())
