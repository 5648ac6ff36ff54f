"""afnio's local API beyond its documented examples: Module as a LangChain Runnable,
the DataLoader and samplers, FacilitySupport's file handling, save/load, the local
tellurio calls, the afnio model clients, set_backward_model_client, TGD's afnio
arguments, and the Trainer's options."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import threading

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.runnables import RunnableLambda

import afnio_langchain as afnio
import afnio_langchain.cognitive as cog
import afnio_langchain.cognitive.functional as F
import afnio_langchain.tellurio as te
from afnio_langchain import Variable, parameters
from afnio_langchain.autodiff import ChatCompletion
from afnio_langchain.models.openai import AsyncOpenAI, OpenAI
from afnio_langchain.optim import TGD
from afnio_langchain.testing import OpenAICompatServer, ScriptedChatModel, request_text
from afnio_langchain.trainer import Trainer, batch_size_of
from afnio_langchain.utils.data import (
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
    WeightedRandomSampler,
    collate,
)
from afnio_langchain.utils.datasets import FacilitySupport


@pytest.fixture(autouse=True)
def no_backward_model_left_behind():
    yield
    afnio.set_backward_model(None)


# --------------------------------------------------------------------------- Module


class Classifier(cog.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.system = cog.Parameter("Label the sentiment.", role="system prompt")
        self.template = Variable("{message}", role="message template")  # not a parameter
        self.chat = cog.ChatCompletion()

    def forward(self, message):
        messages = [{"role": "system", "content": [self.system]}, {"role": "user", "content": [self.template]}]
        return self.chat(self.model, messages, inputs={"message": message})


class Pipeline(cog.Module):
    def __init__(self, model):
        super().__init__()
        self.first = Classifier(model)
        self.second = Classifier(model)
        self.second.system = cog.Parameter("Explain the label.", role="explanation prompt")
        self.shared = self.first  # the same module twice is walked once
        self.register_buffer("notes", Variable("kept", role="notes"))
        self.register_buffer("scratch", Variable("not kept", role="scratch"), persistent=False)

    def forward(self, message):
        return self.second(self.first(message))


def test_module_registers_parameters_modules_and_buffers():
    pipeline = Pipeline(ScriptedChatModel(forward="positive"))
    assert [name for name, _ in pipeline.named_parameters()] == ["first.system", "second.system"]
    assert [name for name, _ in pipeline.named_modules()] == ["", "first", "first.chat", "second", "second.chat"]
    assert [name for name, _ in pipeline.named_children()] == ["first", "second"]
    assert list(pipeline.state_dict()) == ["notes", "first.system", "second.system"]
    assert pipeline.state_dict()["first.system"].grad_fn is None
    assert pipeline.state_dict(keep_vars=True)["first.system"] is pipeline.first.system
    assert [b.data for b in pipeline.buffers()] == ["kept", "not kept"]
    assert parameters(pipeline) == [pipeline.first.system, pipeline.second.system]
    assert pipeline.eval().training is False and pipeline.first.chat.training is False
    assert pipeline.train().second.training is True
    assert "first" in dir(pipeline) and "notes" in dir(pipeline)


def test_module_load_state_dict_copies_values_and_reports_keys():
    pipeline = Pipeline(ScriptedChatModel(forward="x"))
    state = pipeline.state_dict()
    state["first.system"] = Variable("New prompt.", role="system prompt")
    pipeline.load_state_dict(state)
    assert pipeline.first.system.data == "New prompt."
    with pytest.raises(RuntimeError, match="missing keys"):
        pipeline.load_state_dict({"first.system": "x"})
    keys = pipeline.load_state_dict({"first.system": "plain data", "extra": "?"}, strict=False)
    assert pipeline.first.system.data == "plain data"
    assert keys.missing_keys == ["notes", "second.system"] and keys.unexpected_keys == ["extra"]


def test_module_attribute_rules():
    class Early(cog.Module):
        def __init__(self):
            self.p = cog.Parameter("x")  # before super().__init__()

    with pytest.raises(AttributeError, match="before Module.__init__"):
        Early()
    module = Classifier(ScriptedChatModel(forward="x"))
    with pytest.raises(TypeError, match="as parameter"):
        module.system = "a str"
    module.system = None
    assert list(module.parameters()) == []
    del module.chat
    assert list(module.children()) == []
    with pytest.raises(NotImplementedError, match="forward"):
        cog.Module()("x")
    with pytest.raises(NotImplementedError, match="training_step"):
        cog.Module().training_step(None, 0)


def test_module_is_a_runnable_that_composes_with_lcel_and_traces():
    model = ScriptedChatModel(forward=lambda text: "positive" if "great" in text else "negative")
    classifier = Classifier(model)
    chain = RunnableLambda(lambda text: text.strip()) | classifier | RunnableLambda(lambda v: v.data.upper())
    assert chain.invoke("  a great day ") == "POSITIVE"
    assert classifier.batch(["great", "awful"])[1].data == "negative"
    assert classifier.invoke({"message": "great"}).data == "positive"

    class Events(BaseCallbackHandler):
        def __init__(self):
            self.chains, self.chat_parents = {}, []

        def on_chain_start(self, serialized, inputs, *, run_id, parent_run_id=None, **kwargs):
            self.chains[kwargs.get("name")] = run_id

        def on_chat_model_start(self, serialized, messages, *, run_id, parent_run_id=None, **kwargs):
            self.chat_parents.append(parent_run_id)

    events = Events()
    output = classifier.invoke("great", config={"callbacks": [events]})
    assert output.data == "positive"
    assert events.chat_parents == [events.chains["Classifier"]]  # the model call nests under the module


async def test_module_ainvoke_keeps_the_graph():
    model = ScriptedChatModel(forward="negative", feedback="Say when a complaint is polite.")
    classifier = Classifier(model)
    afnio.set_backward_model(model)
    output = await classifier.ainvoke("Thanks, but it is broken.")
    await output.abackward("It was a complaint.")
    assert [g.data for g in classifier.system.grad] == ["Say when a complaint is polite."]


def test_parameter_copies_and_repr():
    import copy

    p = cog.Parameter("Be brief.", role="rule")
    q = copy.deepcopy(p)
    assert isinstance(q, cog.Parameter) and q is not p and (q.data, q.role, q.requires_grad) == ("Be brief.", "rule", True)
    assert repr(p).startswith("Parameter containing:")
    assert cog.Parameter("x", requires_grad=False).requires_grad is False


# --------------------------------------------------------------------------- data


class Pairs(Dataset):
    def __init__(self, n):
        self.n = n

    def __getitem__(self, index):
        if not 0 <= index < self.n:
            raise IndexError(index)
        return Variable(f"q{index}", role="question"), (Variable(index, role="answer"), {"id": index})

    def __len__(self):
        return self.n


def test_dataloader_batches_and_collates_like_afnio():
    loader = DataLoader(Pairs(5), batch_size=2)
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    question, (answer, meta) = batches[0]
    assert (question.data, question.role, answer.data) == (["q0", "q1"], "question", [0, 1])
    assert meta == [{"id": 0}, {"id": 1}]  # dicts inside tuples stay per sample
    assert batch_size_of(batches[-1]) == 1
    assert len(DataLoader(Pairs(5), batch_size=2, drop_last=True)) == 2
    assert [b for b in DataLoader(list(range(3)), batch_size=None)] == [0, 1, 2]
    assert collate([]) == []


def test_dataloader_shuffles_each_pass_or_repeats_with_a_seed():
    data = list(range(20))
    seeded = DataLoader(data, batch_size=20, shuffle=True, seed=7)
    assert list(seeded)[0] == list(seeded)[0] and sorted(list(seeded)[0]) == data
    assert list(DataLoader(data, batch_size=20))[0] == data
    with pytest.raises(ValueError, match="mutually exclusive"):
        DataLoader(data, shuffle=True, sampler=SequentialSampler(data))
    with pytest.raises(ValueError):
        DataLoader(data, batch_size=0)


def test_samplers():
    assert list(SequentialSampler("abc")) == [0, 1, 2]
    draws = list(RandomSampler(range(3), replacement=True, num_samples=50, seed=1))
    assert len(draws) == 50 and set(draws) <= {0, 1, 2}
    repeated = list(RandomSampler(range(4), num_samples=6, seed=0))
    assert set(repeated[:4]) == {0, 1, 2, 3} and len(set(repeated[4:])) == 2  # a permutation, then more
    weighted = list(WeightedRandomSampler([1, 0, 9], 2000, seed=3))
    assert weighted.count(1) == 0 and weighted.count(2) > 5 * weighted.count(0)
    assert sorted(WeightedRandomSampler([1, 1, 1, 0], 3, replacement=False, seed=0)) == [0, 1, 2]
    with pytest.raises(ValueError):
        WeightedRandomSampler([1, 0], 2, replacement=False)
    with pytest.raises(ValueError):
        WeightedRandomSampler([], 1)
    with pytest.raises(ValueError):
        RandomSampler(range(3), num_samples=0)
    with pytest.raises(TypeError):
        RandomSampler(range(3), replacement="yes")


# --------------------------------------------------------------------------- FacilitySupport


def facility_rows(n):
    return [
        {"fields": {"input": f"message {i}"},
         "answer": json.dumps({"urgency": "low", "sentiment": ["positive", "neutral", "negative"][i % 3],
                               "categories": {"cleaning": i % 2 == 0}})}
        for i in range(n)
    ]


def test_facility_support_reads_the_file_and_splits_it_the_same_way_every_time(tmp_path):
    raw = tmp_path / "FacilitySupport" / "raw"
    raw.mkdir(parents=True)
    (raw / "dataset.json").write_text(json.dumps(facility_rows(100)))
    splits = {s: FacilitySupport(s, root=tmp_path, download=False) for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [33, 33, 34]
    messages = [splits[s][i][0].data for s in splits for i in range(len(splits[s]))]
    assert sorted(messages) == sorted(f"message {i}" for i in range(100))  # a partition
    again = FacilitySupport("train", root=tmp_path, download=False)
    assert [again[i][0].data for i in range(33)] == [splits["train"][i][0].data for i in range(33)]
    message, (urgency, sentiment, categories) = splits["test"][0]
    assert message.role == "input email or message" and json.loads(categories.data) is not None
    with pytest.raises(IndexError):
        splits["test"][34]
    with pytest.raises(ValueError):
        FacilitySupport("dev", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="download=True"):
        FacilitySupport("train", root=tmp_path / "elsewhere", download=False)


@pytest.fixture
def file_server():
    """A plain HTTP file server on loopback (Python's own http.server)."""
    payload = json.dumps(facility_rows(9)).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", hashlib.md5(payload).hexdigest()
    server.shutdown()


def test_facility_support_downloads_once_and_checks_the_checksum(tmp_path, file_server, monkeypatch):
    url, md5 = file_server
    monkeypatch.setattr(FacilitySupport, "mirrors", [url])
    monkeypatch.setattr(FacilitySupport, "resources", [("dataset.json", "0" * 32)])
    with pytest.raises(RuntimeError, match="checksum mismatch"):
        FacilitySupport("train", root=tmp_path)
    assert not (tmp_path / "FacilitySupport" / "raw" / "dataset.json").exists()
    monkeypatch.setattr(FacilitySupport, "resources", [("dataset.json", md5)])
    assert len(FacilitySupport("train", root=tmp_path)) == 2
    assert (tmp_path / "FacilitySupport" / "raw" / "dataset.json").exists()


# --------------------------------------------------------------------------- save / load


def test_save_and_load_state_dicts_and_optimizer_state(tmp_path):
    model = ScriptedChatModel(forward="x")
    pipeline = Pipeline(model)
    optimizer = TGD(pipeline.parameters(), model=model, momentum=2)
    optimizer.state[0] = {"step": 1, "momentum_buffer": [{"value": "old", "gradients": ["g"]}]}
    checkpoint = {"epoch": 3, "agent": pipeline.state_dict(), "optimizer": optimizer.state_dict(),
                  "pair": (1, "a"), 4: [cog.Parameter("p", role="r")]}
    afnio.save(checkpoint, tmp_path / "ckpt.hf")
    loaded = afnio.load(tmp_path / "ckpt.hf")
    assert loaded["epoch"] == 3 and loaded["pair"] == (1, "a")
    assert isinstance(loaded[4][0], cog.Parameter) and loaded[4][0].requires_grad
    assert loaded["agent"]["first.system"].data == "Label the sentiment."
    fresh = TGD(Pipeline(model).parameters(), model=model, momentum=2)
    fresh.load_state_dict(loaded["optimizer"])
    assert fresh.state[0]["momentum_buffer"][0]["value"] == "old"
    text = io.StringIO()
    afnio.save(Variable([1, 2]), text)
    assert afnio.load(io.StringIO(text.getvalue())).data == [1, 2]


def test_save_refuses_code_and_load_refuses_other_files(tmp_path):
    with pytest.raises(TypeError, match="state_dict"):
        afnio.save(Pipeline(ScriptedChatModel(forward="x")), tmp_path / "agent.hf")
    with pytest.raises(TypeError, match="function"):
        afnio.save({"fn": len}, tmp_path / "fn.hf")
    import pickle

    (tmp_path / "afnio.hf").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="pickles"):
        afnio.load(tmp_path / "afnio.hf")


# --------------------------------------------------------------------------- tellurio


def test_tellurio_calls_are_local():
    with pytest.raises(RuntimeError, match="no active run"):
        te.log("x", 1)
    run = te.init("me", "Project", name="trial")
    with te.suppress_variable_notifications():
        te.log("loss", 0.5, step=2)
    assert te.get_active_run() is run and run.metrics == [{"name": "loss", "value": 0.5, "step": 2}]
    run.finish()
    assert te.get_active_run() is None
    with pytest.raises(RuntimeError, match="no Tellurio login"):
        te.login(api_key="tellurio-key")


# --------------------------------------------------------------------------- model clients


def test_afnio_clients_work_as_model_clients_and_count_usage():
    with OpenAICompatServer(responder=lambda body: "Ciao" if "Italian" in request_text(body) else "Hola") as server:
        client = AsyncOpenAI(base_url=server.base_url, api_key="local", prices={"local-model": (1.0, 1.0)})
        system = Variable("Translate.", role="system prompt", requires_grad=True)
        messages = [{"role": "system", "content": [system]}, {"role": "user", "content": ["To {language}"]}]
        response = ChatCompletion.apply(client, messages, inputs={"language": ["Italian", "Spanish"]}, model="local-model")
        assert response.data == ["Ciao", "Hola"]
        usage = client.get_usage()
        assert usage["total_tokens"] > 0 and usage["cost"]["amount"] > 0 and usage["unpriced_models"] == []
        client.clear_usage()
        assert client.get_usage()["total_tokens"] == 0
        sync = OpenAI(base_url=server.base_url, api_key="local")
        assert sync.chat(messages=[{"role": "user", "content": "Italian"}], model="m") == "Ciao"
        assert sync.get_usage()["unpriced_models"] == ["m"]
        assert server.requests[-1]["model"] == "m"


def test_set_backward_model_client_with_an_openai_path_runs_backward_on_that_endpoint():
    def responder(body):
        text = request_text(body)
        return json.dumps({"var_1": "Ask for one word."}) if "var_1" in text else "A long answer."

    with OpenAICompatServer(responder=responder) as server:
        afnio.set_backward_model_client(
            "openai/gpt-4o", client_args={"base_url": server.base_url, "api_key": "local"},
            completion_args={"temperature": 0.25},
        )
        assert afnio.get_backward_model_client().model_name == "gpt-4o"
        system = Variable("Answer.", role="system prompt", requires_grad=True)
        forward = ScriptedChatModel(forward="A long answer.")
        out = ChatCompletion.apply(forward, [{"role": "system", "content": [system]}, {"role": "user", "content": "Hi"}])
        out.backward("Too long.")
        assert [g.data for g in system.grad] == ["Ask for one word."]
        body = server.requests[-1]
        assert body["model"] == "gpt-4o" and body["temperature"] == 0.25


def test_set_backward_model_client_errors():
    with pytest.raises(RuntimeError, match="set_backward_model_client"):
        afnio.get_backward_model_client()
    with pytest.raises(ValueError, match="provider/model"):
        afnio.set_backward_model_client("gpt-4o")
    with pytest.raises(ValueError, match="unsupported provider"):
        afnio.set_backward_model_client("anthropic/claude")
    with pytest.raises(TypeError, match="on the chat model itself"):
        afnio.set_backward_model_client(ScriptedChatModel(feedback="x"), completion_args={"temperature": 0})
    afnio.set_backward_model_client(AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="k"),
                                    completion_args={"model": "named"})
    assert afnio.get_backward_model_client().model_name == "named"


def test_tgd_takes_afnios_arguments():
    p = cog.Parameter("x", role="prompt")
    client = AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="k")
    optimizer = TGD([p], model_client=client, model="gpt-5", momentum=3, temperature=1.0, reasoning_effort="low")
    group = optimizer.param_groups[0]
    assert group["model"].model_name == "gpt-5" and group["momentum"] == 3
    assert group["completion_args"] == {"temperature": 1.0, "reasoning_effort": "low"}
    assert afnio.optim.TGD is TGD
    with pytest.raises(TypeError, match="model_client"):
        TGD([p], model="gpt-5")
    with pytest.raises(TypeError, match="custom messages"):
        TGD([p], model_client=client, model="gpt-5", messages=[{"role": "system", "content": ["x"]}])
    with pytest.raises(TypeError, match="once"):
        TGD([p], model=ScriptedChatModel(optimizer="y"), model_client=client)


# --------------------------------------------------------------------------- Variable members


def test_variable_members():
    v = Variable([1, 2.5], role="scores", requires_grad=True)
    assert v.data == [1.0, 2.5] and v.is_floating_point() and v.shape == (2,)
    assert v.to(int).data == [1, 2] and v.to(str).data == ["1.0", "2.5"] and v.to().requires_grad
    assert not Variable([1, 2]).is_floating_point() and Variable(0.5).is_floating_point()
    with pytest.raises(ValueError, match="shape"):
        Variable("a").copy_(Variable(["a", "b"]))
    with pytest.raises(TypeError):
        Variable("a").copy_("b")
    assert Variable("a").variable_id != Variable("a").variable_id


# --------------------------------------------------------------------------- Trainer


def counting_agent(model, *, manual=False):
    class Counter(cog.Module):
        def __init__(self):
            super().__init__()
            self.system = cog.Parameter("Answer.", role="system prompt")
            self.chat = cog.ChatCompletion()
            self.automatic_optimization = not manual

        def _loss(self, batch):
            question, answer = batch
            messages = [{"role": "system", "content": [self.system]}, {"role": "user", "content": [Variable("{q}")]}]
            loss = F.exact_match_evaluator(self.chat(model, messages, inputs={"q": question}), answer)
            return {"loss": loss, "accuracy": loss[0].data / len(answer.data)}

        def training_step(self, batch, batch_idx):
            out = self._loss(batch)
            if manual:
                self.optimizers().clear_grad()
                out["loss"][1].backward()
                self.optimizers().step()
            return out

        def validation_step(self, batch, batch_idx):
            return self._loss(batch)

        test_step = validation_step

        def configure_optimizers(self):
            return TGD(self.parameters(), model_client=model, model="m")

    return Counter()


def digits_model():
    return ScriptedChatModel(forward=lambda t: "4" if "digits" in t else "four",
                             feedback="Ask for digits.", optimizer="Answer with digits.")


DATA = [(Variable("2+2?"), Variable("4"))] * 4


def quiet(**options):
    return Trainer(enable_checkpointing=False, enable_progress_bar=False, enable_agent_summary=False, **options)


def test_trainer_gate_rolls_back_a_rewrite_that_does_not_help():
    model = ScriptedChatModel(forward="four", feedback="Ask for digits.", optimizer="Answer with words.")
    afnio.set_backward_model(model)
    agent = counting_agent(model)
    trainer = quiet(max_epochs=1)
    trainer.fit(agent, train_dataloaders=DataLoader(DATA, batch_size=2), val_dataloaders=DataLoader(DATA, batch_size=4))
    assert agent.system.data == "Answer."  # validation did not rise: rolled back
    assert [step.status for step in trainer.steps] == ["rolled_back", "rolled_back"]
    assert trainer.steps[0].decision == "rolled back: validation 0.000 <= 0.000"
    off = quiet(max_epochs=1, gate="off")
    off.fit(agent, train_dataloaders=DataLoader(DATA, batch_size=2), val_dataloaders=DataLoader(DATA, batch_size=4))
    assert agent.system.data == "Answer with words."  # afnio's loop: every rewrite kept


def test_trainer_without_validation_and_with_manual_optimization():
    model = digits_model()
    afnio.set_backward_model(model)
    agent = counting_agent(model, manual=True)
    trainer = quiet(max_epochs=1)
    trainer.fit(agent, train_dataloader=DataLoader(DATA, batch_size=4))
    assert agent.system.data == "Answer with digits."
    assert trainer.history[0]["train_accuracy"] == 0.0 and trainer.steps == []  # the agent stepped itself
    assert trainer.validate(agent, DataLoader(DATA, batch_size=2)) == {"val_loss": 2.0, "val_accuracy": 1.0}
    assert trainer.test(agent, dataloaders=DataLoader(DATA, batch_size=4))["test_accuracy"] == 1.0


def test_trainer_checkpoints_and_resumes(tmp_path):
    model = digits_model()
    afnio.set_backward_model(model)
    agent = counting_agent(model)
    trainer = Trainer(max_epochs=1, default_root_dir=tmp_path, enable_progress_bar=False, enable_agent_summary=False)
    trainer.fit(agent, train_dataloaders=DataLoader(DATA, batch_size=4), val_dataloaders=DataLoader(DATA, batch_size=4))
    checkpoint = trainer.last_checkpoint
    assert checkpoint.parent == tmp_path / "checkpoints"
    restored = counting_agent(model)
    again = Trainer(max_epochs=2, default_root_dir=tmp_path, enable_progress_bar=False, enable_agent_summary=False)
    again.fit(restored, train_dataloaders=DataLoader(DATA, batch_size=4), ckpt_path=checkpoint)
    assert restored.system.data == "Answer with digits." and [h["epoch"] for h in again.history] == [2]


def test_trainer_retries_a_failing_step_then_raises_and_stops_on_a_budget():
    model = digits_model()
    afnio.set_backward_model(model)
    agent = counting_agent(model)
    failures = []

    def flaky(batch, batch_idx):
        failures.append(batch_idx)
        if len(failures) < 3:
            raise ConnectionError("the endpoint dropped the connection")
        return agent._loss(batch)

    agent.training_step = flaky
    trainer = quiet(max_epochs=1)
    trainer.fit(agent, train_dataloaders=DataLoader(DATA, batch_size=4))
    assert failures == [0, 0, 0] and agent.system.data == "Answer with digits."  # the third try ran

    def broken(batch, batch_idx):
        raise ConnectionError("down")

    agent.training_step = broken
    with pytest.raises(RuntimeError, match="failed after 3 tries: ConnectionError: down"):
        quiet(max_epochs=1).fit(agent, train_dataloaders=DataLoader(DATA, batch_size=4))

    budget = quiet(max_epochs=5, max_calls=1)
    fresh = counting_agent(model)
    budget.fit(fresh, train_dataloaders=DataLoader(DATA, batch_size=1))
    assert budget.stopped.startswith("budget") and len(budget.history) == 1 and len(budget.steps) == 1


def test_trainer_argument_errors():
    trainer = quiet()
    assert trainer.max_epochs == 10
    with pytest.raises(TypeError, match="Module"):
        trainer.fit(object(), train_dataloaders=[])
    agent = counting_agent(digits_model())
    with pytest.raises(ValueError, match="train_dataloaders"):
        trainer.fit(agent)
    with pytest.raises(ValueError, match="test dataloader"):
        trainer.test(agent)
    with pytest.raises(ValueError, match="max_epochs"):
        Trainer(max_epochs=0)

    class BadStep(cog.Module):
        def validation_step(self, batch, batch_idx):
            return "not a loss"

    with pytest.raises(RuntimeError, match="validation_step"):
        trainer.validate(BadStep(), [1])
