"""Hub sharing: ``xt export --to hf`` writes a model card whose metadata parses and whose loading snippet
works without xt; ``xt push`` sends the right requests to a local stand-in hub and fails fast without one."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from xt.cli import cli

sys.path.insert(0, str(Path(__file__).parent))
from test_export_support import make_run, random_adapter, save_base  # noqa: E402

NO_XT = "import sys\nsys.modules['xt'] = None  # any 'import xt' now fails\n"


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n", 2)[1])


def python_block(card: str) -> str:
    return card.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    base = save_base(root / "base", seed=11)
    run = make_run(root / "run", base, random_adapter(base, root / "adapter", seed=12), template="chatml")
    (run / "config.yaml").write_text("model: tiny-llama\nlr: 0.01\nmethod: lora\n")
    (run / "eval-results").mkdir()
    (run / "eval-results" / "results.json").write_text(json.dumps({"results": {"quiz": {"acc": 0.625}}}))
    out = root / "hf"
    result = CliRunner().invoke(cli, ["export", str(run), "--to", "hf", "--out", str(out), "--set", "license=mit"])
    assert result.exit_code == 0, result.output
    return {"root": root, "run": run, "out": out}


def test_export_writes_a_card_whose_metadata_parses(exported):
    card = (exported["out"] / "README.md").read_text()
    meta = front_matter(card)
    assert meta == {"library_name": "transformers", "license": "mit", "pipeline_tag": "text-generation",
                    "tags": ["xt", "lora"]}  # the base is a local folder, so no base_model id
    assert "lr: 0.01" in card and "| quiz | acc | 0.6250 |" in card  # training config and eval results


def test_card_metadata_names_hub_base_and_dataset(tmp_path):
    from xt.hub import model_card
    from xt.run import RunInfo

    RunInfo(model="org/base-7b", model_source="org/base-7b", template="chatml", dataset="tatsu-lab/alpaca",
            final_dir="final", status="finished").save(tmp_path)
    meta = front_matter(model_card(tmp_path, tmp_path, adapter=True, model_id="me/tuned"))
    assert meta["base_model"] == "org/base-7b" and meta["datasets"] == ["tatsu-lab/alpaca"]
    assert meta["library_name"] == "peft"


def test_card_loading_snippet_runs_without_xt(exported):
    snippet = python_block((exported["out"] / "README.md").read_text())
    assert f'model_id = "{exported["out"]}"' in snippet
    out = subprocess.run([sys.executable, "-c", NO_XT + snippet + "print('loaded', type(model).__name__)"],
                         capture_output=True, text=True, timeout=300, cwd=exported["root"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "loaded LlamaForCausalLM"


def test_a_runs_adapter_card_loads_with_peft_without_xt(exported, tmp_path):
    from xt.hub import CARD_FILE, upload_operations
    from xt.model.saving import write_tokenizer_files
    from xt.plugins import get_registry
    from xt.tokenizers import tiny_tokenizer

    final = exported["run"] / "final"
    write_tokenizer_files(final, tiny_tokenizer(), get_registry().get("templates", "chatml"))  # as training does
    operations = {op.path_in_repo: op for op in upload_operations(exported["run"], "me/tuned")}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", CARD_FILE} <= set(operations)
    card = operations[CARD_FILE].path_or_fileobj.decode()
    assert front_matter(card)["library_name"] == "peft" and 'model_id = "me/tuned"' in card
    snippet = python_block(card).replace('"me/tuned"', repr(str(final)))  # a local copy of the repo
    out = subprocess.run([sys.executable, "-c", NO_XT + snippet + "print('loaded', type(model).__name__)"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "loaded PeftModelForCausalLM"


class RecordingHub(BaseHTTPRequestHandler):
    """The three hub endpoints an upload of small files uses; every request is recorded."""

    requests: list = []

    def log_message(self, *args):  # quiet
        pass

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if self.path == "/api/repos/create":
            name = json.loads(body)
            host, port = self.server.server_address
            return self._reply(200, {"url": f"http://{host}:{port}/{name['organization']}/{name['name']}"})
        if self.path == "/api/validate-yaml":  # the client checks the card's metadata before committing
            return self._reply(200, {"errors": [], "warnings": []})
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        if "/commit/" in self.path:
            host, port = self.server.server_address
            return self._reply(200, {"commitUrl": f"http://{host}:{port}/me/tuned/commit/abc", "commitOid": "a" * 40})
        return self._reply(404, {"error": f"unexpected {self.path}"})

    def do_GET(self):  # noqa: N802
        self.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": b""})
        self._reply(404, {"error": f"unexpected {self.path}"})


def xt_push(args: list[str], endpoint: str, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "HF_ENDPOINT": endpoint, "HF_TOKEN": "hf_test_token", "HF_HUB_DISABLE_TELEMETRY": "1",
               **env}
    return subprocess.run([sys.executable, "-m", "xt.cli", "push", *args], capture_output=True, text=True,
                          timeout=120, env={k: v for k, v in environ.items() if v is not None})


def test_push_sends_every_file_in_one_commit(exported):
    RecordingHub.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), RecordingHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = xt_push([str(exported["out"]), "--repo", "me/tuned", "--private"],
                      f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
    assert out.returncode == 0, (out.stderr, [r["path"] for r in RecordingHub.requests])
    assert "/me/tuned/commit/abc" in out.stdout
    create, *_, commit = RecordingHub.requests
    assert create["path"] == "/api/repos/create" and create["auth"] == "Bearer hf_test_token"
    request = json.loads(create["body"])
    assert request["name"] == "tuned" and request["organization"] == "me"
    assert request.get("visibility") == "private" or request.get("private") is True  # hub client 2.x / 1.x
    assert commit["path"] == "/api/models/me/tuned/commit/main"
    (validated,) = [r for r in RecordingHub.requests if r["path"] == "/api/validate-yaml"]
    assert front_matter(json.loads(validated["body"])["content"])["license"] == "mit"
    lines = [json.loads(line) for line in commit["body"].decode().splitlines()]
    sent = {entry["value"]["path"]: base64.b64decode(entry["value"]["content"]) for entry in lines
            if entry["key"] == "file"}
    local = {p.relative_to(exported["out"]).as_posix(): p.read_bytes() for p in exported["out"].rglob("*")
             if p.is_file() and not p.name.startswith(".")}  # hidden files (the export marker) stay local
    assert set(sent) == set(local) and (exported["out"] / ".xt-export").is_file()
    assert all(sent[name] == local[name] for name in local if name != "README.md")
    assert 'model_id = "me/tuned"' in sent["README.md"].decode()  # the card now names the repo


def test_push_without_a_hub_fails_in_seconds_with_one_sentence(exported):
    with socket.socket() as sock:  # a port on 127.0.0.1 that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    out = xt_push([str(exported["run"]), "--repo", "me/tuned"], f"http://127.0.0.1:{port}")
    assert time.monotonic() - started < 30
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"Error: Pushing to 'me/tuned' at http://127.0.0.1:{port} failed: it could not be "
                                 f"reached (")
    assert out.stderr.strip().endswith("check the network or HF_ENDPOINT.") and len(out.stderr.strip().splitlines()) == 1


def test_push_needs_a_token_and_a_repo_name(exported, tmp_path):
    no_token = xt_push([str(exported["out"]), "--repo", "me/tuned"], "http://127.0.0.1:9", HF_TOKEN=None,
                       HF_HOME=str(tmp_path))
    assert no_token.returncode == 2 and "No Hugging Face token found" in no_token.stderr
    bad = xt_push([str(exported["out"]), "--repo", "tuned"], "http://127.0.0.1:9")
    assert bad.returncode == 2 and "--repo 'tuned' is not ORG/NAME" in bad.stderr
