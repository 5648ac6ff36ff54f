"""The commands: ``optimize``, ``evaluate``, ``export`` and ``demo``.

Each runs its checks first (arguments, data, metric, keys, servers, the output folder,
the chain and its template fields against every row), then starts the local model if
one is needed, then runs. Chain factories get a LangChain chat model for the forward
role; the package's own structured calls (backward, optimizer, judge) get its JSON
client, which sends the schema with every request.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from afnio_langchain.cli import _render as render
from afnio_langchain.cli import _setup as setup
from afnio_langchain.cli._export import cmd_export
from afnio_langchain.cli._parser import PROG
from afnio_langchain.cli._setup import CliError
from afnio_langchain.runnables import read_prompts_file
from afnio_langchain.train import (
    MetricScoreError,
    apply_prompts,
    parse_model_spec,
    split_dataset,
    trainable_chain,
)


def cmd_optimize(args: argparse.Namespace) -> int:
    started = time.monotonic()
    if args.out is None:
        raise CliError("optimize needs --out DIR (where the checkpoint and report go)")
    roles = setup.roles(args)
    if roles["backward"] is None or roles["optimizer"] is None:
        raise CliError("optimize needs --model (or both --backward-model and --optimizer-model)")
    train_data, target, inputs = setup.load_data(args.train, args)
    val_data = setup.load_data(args.val, args)[0] if args.val is not None else None
    train, val = list(train_data), None if val_data is None else list(val_data)
    if args.val_fraction is not None:
        try:
            train, val = split_dataset(train, args.val_fraction, args.seed)
        except ValueError as exc:
            raise CliError(f"--val-fraction: {exc}") from None
    setup.check_metric(args, roles["judge"])
    price_table = setup.prices(args.prices)
    setup.check_keys(roles)
    folder = setup.prepare_out(args.out, args, overwrite_finished=False)
    target_obj = setup.import_chain(args.chain)
    if roles["forward"] is None and target_obj.takes_model:
        roles["forward"] = args.model
    with setup.model_pool() as pool:
        models = {role: pool.get(text) for role, text in roles.items() if text and role != "forward"}
        chain = setup.build_chain(target_obj, pool, roles["forward"])
        chain, params = trainable_chain(chain, roles=args.roles)
        setup.check_rows(chain, [train_data, val_data], target, inputs)
        metric = setup.build_metric(args, target, models.get("judge"))
        trainer = setup.make_trainer(
            args, chain, metric, models, target, inputs, price_table, folder,
            info={"chain": args.chain, "roles": list(args.roles), "train": str(args.train), "val": str(args.val) if args.val else None,
                  "models": {k: str(parse_model_spec(v)) for k, v in roles.items() if v is not None}},
            params=params, evaluate_train=not args.no_eval_train,
        )
        setup.start_models(pool)
        print(render.plan_line(trainer, len(train), 0 if val is None else len(val)), flush=True)
        result = setup.train(trainer, train, val, folder, args.argv, pool)
        files = setup.report(result, Path(args.out), args.argv)
    print(render.summary(result, files, time.monotonic() - started, folder.elapsed_before))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from afnio_langchain.demo import (
        CONSTRAINTS,
        TARGET_KEY,
        build_demo_chain,
        label_metric,
        load_demo_data,
    )

    started = time.monotonic()
    out = args.out or setup.DEMO_OUT
    args.out = out
    train, val = load_demo_data()
    price_table = setup.prices(args.prices)
    setup.check_keys({"model": args.model})
    folder = setup.prepare_out(out, args, overwrite_finished=True)
    print(f"{PROG} demo: optimizing the system prompt of a review-labelling pipeline")
    print(f"data: {len(train)} training and {len(val)} validation reviews; metric: the label (1), the right label in a sentence (0.5)")
    with setup.model_pool() as pool:
        client = pool.get(args.model)
        chain, system = build_demo_chain(pool.chat_model(args.model))
        args.constraint = [*CONSTRAINTS, *args.constraint]
        trainer = setup.make_trainer(
            args, chain, label_metric, {"backward": client, "optimizer": client},
            TARGET_KEY, ["review"], price_table, folder,
            info={"chain": "afnio_langchain.demo", "models": {"all": str(parse_model_spec(args.model))}},
            params=[system],
        )
        setup.start_models(pool)
        print(f"model: {parse_model_spec(args.model)} (forward, backward and optimizer)", flush=True)
        print(render.plan_line(trainer, len(train), len(val)), flush=True)
        result = setup.train(trainer, list(train), list(val), folder, args.argv, pool)
        files = setup.report(result, Path(out), args.argv)
    print(render.summary(result, files, time.monotonic() - started, folder.elapsed_before))
    if parse_model_spec(args.model).kind in ("local", "scripted"):
        print(render.DEMO_NOTE.format(model=parse_model_spec(args.model), n_val=len(val), step=1 / len(val)))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from afnio_langchain.train import atomic_write_json, evaluate

    data, target, inputs = setup.load_data(args.data, args)
    roles = {"forward": args.forward_model, "judge": args.judge_model or args.model}
    setup.check_metric(args, roles["judge"])
    setup.check_keys(roles)
    saved = read_prompts_file(args.prompts) if args.prompts is not None else None
    target_obj = setup.import_chain(args.chain)
    if roles["forward"] is None and target_obj.takes_model:
        roles["forward"] = args.model
    with setup.model_pool() as pool:
        judge = pool.get(roles["judge"]) if roles["judge"] and args.metric in setup.JUDGE_NAMES else None
        chain = setup.build_chain(target_obj, pool, roles["forward"])
        if saved is not None:
            chain, params = trainable_chain(chain, roles=args.roles)
            apply_prompts(params, saved, str(args.prompts), chain=chain)
        setup.check_rows(chain, [data], target, inputs)
        metric = setup.build_metric(args, target, judge)
        setup.start_models(pool)
        try:
            result = evaluate(
                chain, list(data), metric, input_keys=inputs, target_key=target,
                max_concurrency=args.max_concurrency, progress=not args.no_progress,
            )
        except MetricScoreError as exc:
            line = data.line_numbers[exc.index]
            raise MetricScoreError(
                f"{args.data}, line {line}: {exc}", metric=exc.metric, value=exc.value,
                index=exc.index, example=exc.example,
            ) from None
        if result.errors:
            pool.check_alive()
    for line in render.evaluation_lines(result, data.line_numbers):
        print(line)
    if args.out is not None:
        report = {**result.to_dict(items=True), "metric": args.metric, "data": str(args.data)}
        for entry, line in zip(report["items"], data.line_numbers):
            entry["line"] = line
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out, report)
        print(f"results: {args.out}")
    return 0


COMMANDS: dict[str, Any] = {
    "optimize": cmd_optimize, "evaluate": cmd_evaluate, "export": cmd_export, "demo": cmd_demo
}
