"""``xt chat`` on tiny runs trained in the test: one-shot replies, stop words, interactive sessions."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from xt.cli import cli

try:
    from .test_export_support import PROMPT, REPLY, make_run, save_base, train_adapter
except ImportError:  # pragma: no cover - rootdir-less invocation
    from test_export_support import PROMPT, REPLY, make_run, save_base, train_adapter


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A base model and two LoRA runs: 'default' template (EOS) and 'chatml' (stop word '<|im_end|>')."""
    root = tmp_path_factory.mktemp("chat")
    base = save_base(root / "base")
    runs = {"base": base}
    for template in ("default", "chatml"):
        adapter = train_adapter(base, root / f"adapter-{template}", template=template)
        runs[template] = make_run(root / f"run-{template}", base, adapter, template=template)
    return runs


def test_prompt_prints_only_the_reply_and_stops_at_eos(trained):
    result = CliRunner().invoke(cli, ["chat", str(trained["default"]), "--prompt", PROMPT, "--max-new-tokens", "40"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == REPLY

    from xt.chat import ChatOptions, generate_reply, load_chat_model

    chat_model = load_chat_model(ChatOptions(target=str(trained["default"])))
    assert chat_model.template.name == "default"  # the run's template, from run.json
    gen = generate_reply(chat_model, [{"role": "user", "content": PROMPT}], max_new_tokens=40)
    assert gen.text == REPLY
    assert gen.stop_reason == "eos" and gen.new_tokens < 40


def test_stop_word_ends_the_reply_and_is_not_printed(trained):
    from xt.chat import ChatOptions, generate_reply, load_chat_model

    chat_model = load_chat_model(ChatOptions(target=str(trained["chatml"])))
    assert chat_model.template.name == "chatml"
    assert len(chat_model.tokenizer.encode("<|im_end|>", add_special_tokens=False)) > 1  # only a stop word can end it
    streamed: list[str] = []
    gen = generate_reply(chat_model, [{"role": "user", "content": PROMPT}], max_new_tokens=40,
                         on_text=streamed.append)
    assert gen.text == REPLY and gen.stop_reason == "stop_word" and gen.new_tokens < 40
    assert "".join(streamed).strip() == REPLY and "<|" not in "".join(streamed)


def test_base_model_with_adapter_flag_equals_the_run(trained):
    adapter = trained["default"] / "final"
    result = CliRunner().invoke(cli, ["chat", str(trained["base"]), "--adapter", str(adapter), "--template",
                                      "default", "--prompt", PROMPT])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == REPLY


def test_interactive_two_turns_reset_and_exit(trained):
    session = f"{PROMPT}\nAnd again?\n/reset\n{PROMPT}\n/exit\nnever read\n"
    result = CliRunner().invoke(cli, ["chat", str(trained["default"]), "--max-new-tokens", "20"], input=session)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.count(">>> ") == 5  # 2 turns, /reset, 1 turn, /exit; the line after /exit is never read
    assert "(history cleared)" in out
    first, _, after_reset = out.partition("(history cleared)")
    assert REPLY in first and REPLY in after_reset


def test_chat_loop_keeps_history_and_reset_clears_it():
    from xt.chat import chat_loop

    seen: list[list[dict]] = []

    def respond(messages, on_text):
        seen.append([dict(m) for m in messages])
        on_text("ok")
        return "ok"

    out = io.StringIO()
    turns = chat_loop(respond, system="Be brief.", stdin=io.StringIO("a\nb\n/reset\nc\n"), stdout=out)
    assert turns == 3
    assert [m["content"] for m in seen[1]] == ["Be brief.", "a", "ok", "b"]
    assert [m["content"] for m in seen[2]] == ["Be brief.", "c"]  # /reset keeps only the system prompt
    assert out.getvalue().endswith(">>> \n")  # EOF ends the session


def test_four_bit_loading_patches_every_linear4bit(trained):
    from bitsandbytes.nn import Linear4bit
    from xt.chat import ChatOptions, generate_reply, load_chat_model

    chat_model = load_chat_model(ChatOptions(target=str(trained["default"]), bits=4))
    quantized = [m for m in chat_model.model.modules() if isinstance(m, Linear4bit)]
    assert quantized and all(m.support_avx512bf16_for_cpu is False for m in quantized)
    gen = generate_reply(chat_model, [{"role": "user", "content": PROMPT}], max_new_tokens=8)
    assert 0 < gen.new_tokens <= 8


@pytest.mark.parametrize("args, message", [
    (["--backend", "lmdeploy"], "CUDA"),
    (["--backend", "lmdeployy"], "Did you mean 'lmdeploy'"),
    (["--image", "cat.png"], "--image needs a multimodal model"),
    (["--template", "chatmll"], "Did you mean 'chatml'"),
])
def test_clear_errors(trained, args, message):
    if "lmdeploy" in args[-1] and "lmdeploy" not in _exporters():
        pytest.skip("xt-lmdeploy is not installed")
    result = CliRunner().invoke(cli, ["chat", str(trained["default"]), "--prompt", "hi", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_chat_on_a_folder_that_is_not_a_run(tmp_path):
    result = CliRunner().invoke(cli, ["chat", str(tmp_path / "nope"), "--prompt", "hi"])
    assert result.exit_code == 2 and "does not exist" in result.output


def _exporters() -> list[str]:
    from xt.plugins import get_registry

    return get_registry().names("exporters")


@pytest.mark.slow
def test_interactive_session_in_a_pseudo_terminal(trained):
    """A real terminal: the banner appears, the reply streams, /exit ends the process."""
    import pty
    import select
    import time

    xt = Path(sys.executable).with_name("xt")
    pid, fd = pty.fork()
    if pid == 0:  # child
        os.execv(str(xt), [str(xt), "chat", str(trained["default"]), "--max-new-tokens", "20"])
    output = b""

    def read_until(marker: bytes, timeout: float = 120) -> None:
        nonlocal output
        deadline = time.time() + timeout
        while marker not in output and time.time() < deadline:
            ready, _, _ = select.select([fd], [], [], 1)
            if ready:
                try:
                    output += os.read(fd, 4096)
                except OSError:
                    break

    read_until(b">>> ")
    os.write(fd, (PROMPT + "\n").encode())
    read_until(REPLY.encode())
    os.write(fd, b"/exit\n")
    _, status = os.waitpid(pid, 0)
    text = output.decode(errors="replace")
    assert "/reset clears the history" in text
    assert REPLY in text
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.slow
def test_prompt_mode_in_a_subprocess_prints_only_the_reply(trained):
    xt = Path(sys.executable).with_name("xt")
    proc = subprocess.run([str(xt), "chat", str(trained["default"]), "--prompt", PROMPT], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == REPLY + "\n"
