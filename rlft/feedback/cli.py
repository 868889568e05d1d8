"""``rlft rate`` and ``rlft reward-model``: the command-line entry points of the feedback part.

    rlft rate --db runs/x/feedback.sqlite [--host 127.0.0.1] [--port 8000] [--token T] [--lease-s 600]
    rlft rate export --db runs/x/feedback.sqlite --out ratings.jsonl [--include-skips]
    rlft reward-model train --db runs/x/feedback.sqlite --base MODEL_DIR --out DIR [--epochs 3] [--lr 2e-5]

Also runnable as ``python -m rlft.feedback.cli rate ...`` / ``... reward-model ...``.
"""

from __future__ import annotations

import argparse
import sys

from .store import Store


def _rate_export(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="rlft rate export", description="Write the ratings in a feedback "
                                "database as JSONL: one object per rating with its prompt and completion(s).")
    p.add_argument("--db", required=True, help="the feedback SQLite file")
    p.add_argument("--out", required=True, help="the JSONL file to write ('-' for stdout)")
    p.add_argument("--include-skips", action="store_true", help="also write skips (kind: skip)")
    a = p.parse_args(argv)
    with Store(a.db) as store:
        if a.out == "-":
            n = store.export(sys.stdout, include_skips=a.include_skips)
        else:
            with open(a.out, "w", encoding="utf-8") as fp:
                n = store.export(fp, include_skips=a.include_skips)
    print(f"rlft rate export: {n} ratings -> {a.out}", file=sys.stderr)
    return 0


def rate_main(argv: list[str]) -> int:
    """``rlft rate``: serve the rating page for a feedback database (or ``rlft rate export``)."""
    if argv and argv[0] == "export":
        return _rate_export(argv[1:])
    p = argparse.ArgumentParser(prog="rlft rate", description="Serve the page where people rate samples "
                                "(see docs/feedback.md). Subcommand: 'rlft rate export --db F --out X.jsonl'.")
    p.add_argument("--db", required=True, help="the feedback SQLite file (created if missing)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; anything but loopback requires a token")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free one)")
    p.add_argument("--token", default=None, help="access token; generated and printed when binding a "
                                                 "non-loopback address without one")
    p.add_argument("--lease-s", type=float, default=600.0, help="seconds an item stays with the rater who opened it")
    a = p.parse_args(argv)
    try:
        from .server import serve
    except ImportError as e:
        print(f"rlft rate needs the web extra: pip install 'rlft[web]' ({e})", file=sys.stderr)
        return 2
    try:
        serve(a.db, host=a.host, port=a.port, token=a.token, lease_s=a.lease_s,
              log=lambda s: print(s, flush=True))
    except OSError as e:
        print(f"rlft rate: cannot serve on {a.host}:{a.port}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def reward_model_main(argv: list[str]) -> int:
    """``rlft reward-model train``: fit a reward model on the ratings in a feedback database."""
    p = argparse.ArgumentParser(prog="rlft reward-model", description="Reward models from human ratings.")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="fit an AutoModelForSequenceClassification on the ratings",
                       description="Bradley-Terry loss on pairwise preferences, MSE to (score-3)/2 on 1-5 "
                                   "scores; saved with save_pretrained (+ tokenizer) to --out.")
    t.add_argument("--db", required=True, help="the feedback SQLite file")
    t.add_argument("--base", required=True, help="folder (or hub id) with the starting model and tokenizer")
    t.add_argument("--out", required=True, help="folder to save the reward model to")
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--lr", type=float, default=2e-5)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--max-length", type=int, default=512, help="tokens of prompt+completion (kept from the end)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--run-id", default=None, help="only the ratings of this run")
    t.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    a = p.parse_args(argv)
    from .reward_model import train

    try:
        train(a.db, a.base, a.out, epochs=a.epochs, lr=a.lr, batch_size=a.batch_size, max_length=a.max_length,
              seed=a.seed, run_id=a.run_id, device=a.device, log=lambda s: print(s, flush=True))
    except ValueError as e:
        print(f"rlft reward-model: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"rate": rate_main, "reward-model": reward_model_main}
    if not argv or argv[0] not in commands:
        print("usage: python -m rlft.feedback.cli {rate,reward-model} ...", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
