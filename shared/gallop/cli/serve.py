"""gallop serve: the local stack and the API on 127.0.0.1, until Ctrl-C."""

from __future__ import annotations

import argparse
import json
from typing import Any

from gallop.cli.common import UserError, add_json, add_state_dir, progress, state_dir


def add(commands: Any) -> None:
    p = commands.add_parser("serve", help="run the local stack and the API on 127.0.0.1")
    add_state_dir(p)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--fresh", action="store_true", help="start with empty local state")
    add_json(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from gallop.local.stack import LocalStack, StateDirBusy

    try:
        stack = LocalStack(state_dir(args), fresh=args.fresh).start()
    except StateDirBusy as exc:
        raise UserError(str(exc)) from None
    try:
        assert stack.settings is not None
        endpoints = {
            "state_dir": str(stack.state_dir),
            "aws_endpoint_url": stack.settings.aws_endpoint_url,
            "api_url": f"http://127.0.0.1:{args.port}",
            "api_key": stack.api_key,
        }
        if args.json:  # one line, so that a script can read it while the stack runs
            print(json.dumps(endpoints), flush=True)
        else:
            print(f"gallop local stack, state in {endpoints['state_dir']}")
            print(f"  S3/SQS (moto):  {endpoints['aws_endpoint_url']}")
            print(f"  API:            {endpoints['api_url']}  (docs: /docs)")
            print(f"  API key:        {endpoints['api_key']}")
            print("  Ctrl-C stops everything.", flush=True)
        stack.run_monitor_every(stack.settings.monitor_interval_seconds)
        stack.serve_api(args.port, block=True)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how serve is meant to stop; uvicorn re-raises it after shutting down
    finally:
        stack.stop()
        progress("stopped.")
    return 0
