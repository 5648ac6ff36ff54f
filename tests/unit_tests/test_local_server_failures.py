"""A local model server that dies is reported as such (its signal, the tail of its log,
the log's path and the fix), never as a connection error on every example.

llama.cpp is replaced by a small stand-in server (stdlib only) that speaks the same
OpenAI routes and kills itself with SIGSEGV on its Nth chat request, as the natively
built llama-cpp-python did on an AVX-512 Xeon. Hermetic (loopback only)."""

from __future__ import annotations

import tempfile
import textwrap
from pathlib import Path

import pytest

from afnio_langchain.cli import main
from afnio_langchain.models import LocalModelServer, LocalServerError

FAKE_SERVER = textwrap.dedent(
    '''
    """Stand-in for llama_cpp.server: answers /v1/models, and chat completions until the
    request number in FAKE_LLAMA_CRASH_AT, where it dies of SIGSEGV like a bad build."""
    import json, os, signal, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer

    args = sys.argv[1:]
    port = int(args[args.index("--port") + 1])
    crash_at = int(os.environ.get("FAKE_LLAMA_CRASH_AT", "1"))
    seen = {"chat": 0}
    print("fake llama: loading model", flush=True)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, body):
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._send({"object": "list", "data": [{"id": "smollm2-135m-instruct"}]})

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen["chat"] += 1
            if seen["chat"] >= crash_at:
                print("ggml: general protection fault in libggml-cpu.so", flush=True)
                os.kill(os.getpid(), signal.SIGSEGV)
            self._send({"choices": [{"message": {"role": "assistant", "content": "positive"}}],
                        "usage": {"prompt_tokens": 3, "completion_tokens": 1}})

    HTTPServer(("127.0.0.1", port), Handler).serve_forever()
    '''
)


@pytest.fixture
def fake_llama(tmp_path, monkeypatch):
    """LocalModelServer runs the stand-in instead of llama_cpp.server. Its logs go under
    ``tmp_path``: a failed start keeps its log for the user, and tests fail starts on
    purpose, which left one log in the system's temporary folder per run."""
    import afnio_langchain.models._local as local

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    (tmp_path / "fake_llama_server.py").write_text(FAKE_SERVER)
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setattr(LocalModelServer, "_server_module", "fake_llama_server")
    monkeypatch.setattr(local, "_missing_packages", lambda: [])
    monkeypatch.setattr(local, "find_gguf", lambda: model)
    monkeypatch.setattr(local, "local_model_available", lambda: True)
    import afnio_langchain.models as models

    monkeypatch.setattr(models, "local_model_available", lambda: True)
    return tmp_path


def test_a_server_that_crashes_on_its_first_request_fails_the_start_up_check(fake_llama, monkeypatch):
    monkeypatch.setenv("FAKE_LLAMA_CRASH_AT", "1")
    server = LocalModelServer(startup_timeout=30)
    with pytest.raises(LocalServerError) as info:
        server.start()
    message = str(info.value)
    assert "died on its first chat request" in message and "signal SIGSEGV (exit -11)" in message
    assert "general protection fault" in message  # the log's tail
    assert info.value.returncode == -11 and info.value.log_path.exists()
    assert str(info.value.log_path) in message
    assert 'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --force-reinstall --no-cache-dir' in message
    assert not server.running
    info.value.log_path.unlink()


def test_a_server_that_passes_its_check_answers_and_reports_a_later_death(fake_llama, monkeypatch):
    monkeypatch.setenv("FAKE_LLAMA_CRASH_AT", "3")
    with LocalModelServer(startup_timeout=30) as server:
        client = server.model_client()
        assert client.complete([{"role": "user", "content": "Review: fine."}]).text == "positive"
        server.check_alive()
        import openai

        with pytest.raises(openai.APIConnectionError):  # the request that killed it
            client.complete([{"role": "user", "content": "again"}])
        with pytest.raises(LocalServerError, match="died while it was in use: signal SIGSEGV") as info:
            server.check_alive()
        log = info.value.log_path
    assert log.exists()  # kept for the user to read, although the server was stopped
    log.unlink()


def test_the_demo_reports_a_dead_local_server_not_connection_errors(fake_llama, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FAKE_LLAMA_CRASH_AT", "4")  # health check, then 2 forward calls, then dies
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("afnio-langchain: the local model server (llama_cpp.server) died while it was in use")
    assert "signal SIGSEGV" in err and "DGGML_NATIVE=OFF" in err
    assert "Connection error" not in err
    log = err.split("its log (")[1].split(")")[0]
    assert Path(log).parent == tmp_path
    assert "general protection fault" in Path(log).read_text()


def test_ctrl_c_while_the_local_server_starts_leaves_nothing(fake_llama, monkeypatch, tmp_path, capsys):
    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(LocalModelServer, "_health_check", interrupted)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        "afnio-langchain: interrupted before training started; nothing was written"
    )
    assert "Traceback" not in err and not out.exists()


def test_the_local_client_sends_the_schema_with_every_structured_call():
    """The local client asks llama.cpp for ``json_object`` with the schema (its grammar)."""
    import asyncio

    from afnio_langchain.models import request_fields
    from afnio_langchain.testing import OpenAICompatServer

    with OpenAICompatServer() as stand_in:
        server = LocalModelServer(port=stand_in.port)  # never started: only its clients
        client = server.model_client(max_tokens=64)
        fields = asyncio.run(request_fields(
            client, [{"role": "user", "content": "Feedback?"}], {"var_1": "a", "var_2": "b"},
            purpose="backward", where="test",
        ))
    assert set(fields) == {"var_1", "var_2"}
    assert stand_in.requests  # the first reply had no JSON: it was re-asked, schema and all
    for body in stand_in.requests:
        assert body["response_format"]["type"] == "json_object"
        assert body["response_format"]["schema"]["required"] == ["var_1", "var_2"]
        assert body["max_tokens"] == 64


def test_a_ctrl_c_in_the_terminal_does_not_reach_the_server(fake_llama, monkeypatch):
    """A terminal's Ctrl-C goes to its whole process group; the server runs in its own
    session, so only the command gets it (and stops the server itself)."""
    import os

    monkeypatch.setenv("FAKE_LLAMA_CRASH_AT", "100")
    with LocalModelServer(startup_timeout=30) as server:
        child = server._proc.pid
        assert os.getpgid(child) != os.getpgid(0)
        assert os.getsid(child) != os.getsid(0)
    assert not server.running
