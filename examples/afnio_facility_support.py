"""afnio's README quickstart (the Facility Support sentiment classifier), running
locally on this package: the code below is afnio's with its imports changed to
``afnio_langchain``, a small Facility-Support-shaped dataset shipped beside this file
(30 messages written for this example, in the real dataset's format), and the model
clients chosen on the command line:

    python examples/afnio_facility_support.py             # scripted model, offline
    python examples/afnio_facility_support.py --loopback  # the same, over HTTP (loopback)
    python examples/afnio_facility_support.py --base-url URL --model NAME  # any
                                                          # OpenAI-compatible endpoint

``--download`` reads Meta's real dataset instead (fetched once from its public
repository). The scripted model is a stand-in, not a language model: it labels a
message by keywords, so polite complaints ("Thank you, but the heating is broken")
come out positive, and it applies "a complaint is negative even when phrased
politely" only once its system prompt says so. Its feedback and its proposed prompt
are scripted too (``PROPOSAL`` below). What the run shows is afnio's loop working
locally end to end: the classifier module, the DataLoaders and weighted sampler, the
exact-match loss and its backward pass, TGD, and the Trainer's validation gate, which
keeps the rewritten prompt because the validation accuracy rises.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
from typing import Any

import afnio_langchain as afnio
import afnio_langchain.cognitive as cog
import afnio_langchain.cognitive.functional as F
import afnio_langchain.tellurio as te
from afnio_langchain.models import required_keys_in
from afnio_langchain.models.openai import AsyncOpenAI
from afnio_langchain.testing import OpenAICompatServer, ScriptedChatModel, request_text
from afnio_langchain.trainer import Trainer
from afnio_langchain.utils.data import DataLoader, WeightedRandomSampler
from afnio_langchain.utils.datasets import FacilitySupport

DATA_ROOT = pathlib.Path(__file__).resolve().parent / "data"

# -- the stand-in model (scripted and loopback modes) ------------------------------------
POLITE = ("thank", "great", "appreciate", "excellent")
COMPLAINTS = ("broken", "not cleaned", "failed", "failing", "skipped", "leak", "dirty", "stuck", "unacceptable")
RULE = "phrased politely"
PROPOSAL = (
    "Read the provided message and determine the sentiment. A message that reports "
    "something broken, dirty or not done is negative, even when it is phrased politely."
)
FEEDBACK = (
    "Polite openings such as 'thank you' hide complaints: the prompt should say that a "
    "report of a problem is negative whatever its tone."
)


def stand_in_label(request: str) -> str:
    """The stand-in classifier: keywords, plus the polite-complaint rule when the system
    prompt (the text before the message) states it."""
    prompt, _, message = request.partition("**Message:**")
    text = message.lower()
    complaint = any(word in text for word in COMPLAINTS)
    if any(word in text for word in POLITE):
        return "negative" if complaint and RULE in prompt else "positive"
    return "negative" if complaint else "neutral"


def stand_in_reply(request: str) -> str:
    return json.dumps({"sentiment": stand_in_label(request)})


def scripted_model() -> ScriptedChatModel:
    return ScriptedChatModel(forward=stand_in_reply, feedback=FEEDBACK, optimizer=PROPOSAL)


def loopback_responder(body: dict[str, Any]) -> str:
    """The stand-in model behind the OpenAI-compatible loopback server."""
    text = request_text(body)
    keys = required_keys_in(text) or []
    if "improved_value" in keys:  # a TGD proposal
        return json.dumps({"improved_value": PROPOSAL})
    if keys:  # a backward call: one feedback text per requested key
        return json.dumps({key: FEEDBACK for key in keys})
    return stand_in_reply(text)


# -- afnio's quickstart, imports changed ------------------------------------------------
def run(fw_model_client: Any, optim_model_client: Any, model: str, root: pathlib.Path, download: bool,
        max_epochs: int = 5, seed: int | None = None) -> dict[str, Any]:
    # Initialize Project and experiment Run
    run = te.init("your-username", "Facility Support")

    # Compute per-sample weights to balance the training set
    def compute_sample_weights(data):
        with te.suppress_variable_notifications():
            labels = [y.data for _, (_, y, _) in data]
            counts = {label: labels.count(label) for label in set(labels)}
            total = len(data)
        return [total / counts[label] for label in labels]

    # Prepare data and loaders
    train_data = FacilitySupport(split="train", root=root, download=download)
    test_data = FacilitySupport(split="test", root=root, download=download)
    val_data = FacilitySupport(split="val", root=root, download=download)

    weights = compute_sample_weights(train_data)
    sampler = WeightedRandomSampler(weights, num_samples=len(train_data), replacement=True, seed=seed)

    BATCH_SIZE = 33
    train_dataloader = DataLoader(train_data, sampler=sampler, batch_size=BATCH_SIZE)
    val_dataloader = DataLoader(val_data, batch_size=BATCH_SIZE, seed=42)
    test_dataloader = DataLoader(test_data, batch_size=BATCH_SIZE, seed=42)

    # Define prompt and response format
    sentiment_task = "Read the provided message and determine the sentiment."
    sentiment_user = "Read the provided message and determine the sentiment.\n\n**Message:**\n\n{message}\n\n"
    SENTIMENT_RESPONSE_FORMAT = {
        "type": "json_schema",
        "json_schema": {
            "strict": True,
            "name": "sentiment_response_schema",
            "schema": {
                "type": "object",
                "properties": {
                    "sentiment": {
                        "type": "string",
                        "enum": ["positive", "neutral", "negative"],
                    },
                },
                "additionalProperties": False,
                "required": ["sentiment"],
            },
        },
    }

    # Define the sentiment classification agent
    class FacilitySupportAnalyzer(cog.Module):
        def __init__(self):
            super().__init__()
            self.sentiment_task = cog.Parameter(data=sentiment_task, role="system prompt for sentiment classification", requires_grad=True)
            self.sentiment_user = afnio.Variable(data=sentiment_user, role="input template to sentiment classifier")
            self.sentiment_classifier = cog.ChatCompletion()

        def forward(self, fwd_model, inputs, **completion_args):
            sentiment_messages = [
                {"role": "system", "content": [self.sentiment_task]},
                {"role": "user", "content": [self.sentiment_user]},
            ]
            return self.sentiment_classifier(fwd_model, sentiment_messages, inputs=inputs, response_format=SENTIMENT_RESPONSE_FORMAT, **completion_args)

        def training_step(self, batch, batch_idx):
            X, y = batch
            _, gold_sentiment, _ = y
            pred_sentiment = self(fw_model_client, inputs={"message": X}, model=model, temperature=0.0)
            pred_sentiment.data = [json.loads(re.sub(r"^```json\n|\n```$", "", item))["sentiment"].lower() for item in pred_sentiment.data]
            loss = F.exact_match_evaluator(pred_sentiment, gold_sentiment)
            return {"loss": loss, "accuracy": loss[0].data / len(gold_sentiment.data)}

        def validation_step(self, batch, batch_idx):
            return self.training_step(batch, batch_idx)

        def test_step(self, batch, batch_idx):
            return self.validation_step(batch, batch_idx)

        def configure_optimizers(self):
            constraints = [
                afnio.Variable(
                    data="The improved variable must never include or reference the characters `{` or `}`. Do not output them, mention them, or describe them in any way.",
                    role="optimizer constraint",
                )
            ]
            optimizer = afnio.optim.TGD(self.parameters(), model_client=optim_model_client, constraints=constraints, momentum=3, model=model, temperature=1.0, max_completion_tokens=32000, reasoning_effort="low")
            return optimizer

    # Instantiate agent and trainer
    agent = FacilitySupportAnalyzer()
    trainer = Trainer(max_epochs=max_epochs)

    # Evaluate the agent on the test set before training (baseline performance)
    llm_clients = [fw_model_client, afnio.get_backward_model_client(), optim_model_client]
    before = trainer.test(agent=agent, test_dataloader=test_dataloader, llm_clients=llm_clients)

    # Train the agent on the training set and validate on the validation set
    trainer.fit(agent=agent, train_dataloader=train_dataloader, val_dataloader=val_dataloader, llm_clients=llm_clients)

    after = trainer.test(agent=agent, test_dataloader=test_dataloader, llm_clients=llm_clients)
    run.finish()
    return {
        "test_accuracy_before": before["test_accuracy"],
        "test_accuracy_after": after["test_accuracy"],
        "system_prompt": agent.sentiment_task.data,
        "history": trainer.history,
        "logged_metrics": run.metrics,
        "total_cost": trainer.total_cost,
        "checkpoint": str(trainer.last_checkpoint),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loopback", action="store_true", help="serve the stand-in model over HTTP on 127.0.0.1")
    parser.add_argument("--base-url", help="an OpenAI-compatible endpoint (uses OPENAI_API_KEY, or 'local')")
    parser.add_argument("--model", default="gpt-4.1-nano", help="the model name sent to --base-url")
    parser.add_argument("--download", action="store_true", help="use Meta's real dataset (fetched once)")
    parser.add_argument("--root", default=None, help="where the dataset is (default: beside this file)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=None, help="seed of the weighted sampler (default: random)")
    args = parser.parse_args(argv)
    root = pathlib.Path(args.root) if args.root else DATA_ROOT
    completion_args = {"temperature": 1.0, "max_completion_tokens": 32000, "reasoning_effort": "low"}
    if args.base_url or args.loopback:
        server = OpenAICompatServer(responder=loopback_responder) if args.loopback else None
        base_url = server.start().base_url if server else args.base_url
        try:
            client_args = {"base_url": base_url, "api_key": "local" if server else None}
            afnio.set_backward_model_client(f"openai/{args.model}", client_args=client_args, completion_args=completion_args)
            clients = (AsyncOpenAI(**client_args), AsyncOpenAI(**client_args))
            summary = run(*clients, args.model, root, args.download, args.epochs, args.seed)
        finally:
            if server:
                server.stop()
    else:
        model = scripted_model()
        afnio.set_backward_model_client(model)
        summary = run(model, model, args.model, root, args.download, args.epochs, args.seed)
    print(f"Test accuracy: {summary['test_accuracy_before']:.3f} -> {summary['test_accuracy_after']:.3f}")
    print(f"System prompt: {summary['system_prompt']}")
    return summary


if __name__ == "__main__":
    main()
