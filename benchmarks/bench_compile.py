"""Compile time for 1k and 10k step templates (schema checks, graph, cycle
check, expression parsing, priorities), in a layered random shape with a
templated config on every step."""

from __future__ import annotations

import argparse

from common import best_of, quiet_logs, table

import shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    quiet_logs()
    from dagrun import compile_template

    rows = []
    for n in (1_000, 10_000):
        plain = shapes.to_template(shapes.layered(n, 50), action="noop")
        templated = shapes.to_template(shapes.layered(n, 50), action="sleep",
                                       config={"seconds": "{{ vars.delay }}"})
        templated["vars"] = {"delay": 0}
        for label, doc in (("noop", plain), ("templated config", templated)):
            seconds = best_of(args.repeat, lambda: compile_template(doc))
            rows.append([n, label, seconds * 1e3, seconds / n * 1e6])
    table(f"compile time (best of {args.repeat})", ["steps", "template", "ms", "us per step"], rows)


if __name__ == "__main__":
    main()
