"""`python -P -m tide.benchmarks.guided`: guided JSON with and without fast-forward, back to back on one engine.

The schema has many fixed keys, so most of each output is forced by the grammar. Both runs use greedy decoding on the
same prompts; the script checks that their outputs are identical and that every output validates, then reports the
engine steps, the tokens fast-forward appended without a decode step, and the wall time of each side.
"""
from __future__ import annotations

import argparse
import json
import time

import jsonschema

from tide.engine.llm import LLM
from tide.engine.sampling_params import SamplingParams

_FIELDS = {
    "customer_account_identifier": {"type": "integer", "minimum": 0, "maximum": 99999},
    "customer_full_name": {"type": "string", "maxLength": 24},
    "shipping_address_postal_code": {"type": "string", "pattern": "^[0-9]{5}$"},
    "preferred_delivery_window": {"enum": ["morning", "afternoon", "evening"]},
    "requires_signature_on_delivery": {"type": "boolean"},
    "gift_wrapping_requested": {"type": "boolean"},
    "number_of_items_in_order": {"type": "integer", "minimum": 1, "maximum": 20},
    "order_priority_level": {"enum": ["standard", "express", "overnight"]},
}
SCHEMA = {"type": "object", "properties": _FIELDS, "required": list(_FIELDS), "additionalProperties": False}
_CUSTOMERS = ["Ada Park", "Bo Chen", "Cleo Diaz", "Dan Evans", "Eve Fox", "Finn Gray", "Gus Hill", "Ivy Jones"]


def prompts(n: int) -> list[list[dict]]:
    """Chat prompts asking for one order record each."""
    return [[{"role": "user", "content": f"Write the order of {_CUSTOMERS[i % len(_CUSTOMERS)]} (order {i + 1}) as "
              f"JSON with the fields {', '.join(_FIELDS)}."}] for i in range(n)]


def run(llm: LLM, batch: list[list[dict]], fast_forward: bool, max_tokens: int) -> dict:
    """One side: outputs, seconds, engine steps and tokens appended by fast-forward."""
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens,
                            guided={"json_schema": SCHEMA, "fast_forward": fast_forward})
    stats = llm.engine.stats
    steps, forced = stats.num_steps, stats.guided_forced_tokens
    started = time.perf_counter()
    outputs = llm.generate(batch, params)
    return {"seconds": time.perf_counter() - started, "steps": stats.num_steps - steps,
            "forced": stats.guided_forced_tokens - forced, "texts": [o.text for o in outputs],
            "tokens": sum(len(o.token_ids) for o in outputs)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -P -m tide.benchmarks.guided", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", help="alias, HF directory or GGUF file (default smollm2-135m)")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2, help="alternate the two sides this many times; best time counts")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    llm = LLM(args.model, device=args.device)
    batch = prompts(args.prompts)
    run(llm, batch[:2], True, args.max_tokens)  # warm-up: builds llguidance's tokenizer and compiles the schema
    best: dict[bool, dict] = {}
    for _ in range(args.repeats):
        for fast_forward in (True, False):
            result = run(llm, batch, fast_forward, args.max_tokens)
            if fast_forward not in best or result["seconds"] < best[fast_forward]["seconds"]:
                best[fast_forward] = result
    on, off = best[True], best[False]
    if on["texts"] != off["texts"]:
        raise SystemExit("fast-forward changed the output: this is a bug")
    for text in on["texts"]:
        jsonschema.validate(json.loads(text), SCHEMA)
    print(f"{args.prompts} prompts, {len(_FIELDS)} fixed keys, greedy, {on['tokens']} output tokens; outputs identical "
          f"and valid on both sides")
    for label, r in (("fast-forward", on), ("token by token", off)):
        print(f"  {label:<15} {r['steps']:5d} steps  {r['forced']:5d} forced tokens  {r['seconds']:7.2f} s  "
              f"{r['tokens'] / r['seconds']:7.1f} output tok/s")
    print(f"  steps saved: {off['steps'] - on['steps']} ({1 - on['steps'] / off['steps']:.0%}); "
          f"speed-up {off['seconds'] / on['seconds']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
