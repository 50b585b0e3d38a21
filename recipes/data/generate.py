"""Regenerate the shipped datasets (deterministic; run from the repo root):

    .venv/bin/python recipes/data/generate.py            # writes the files
    .venv/bin/python recipes/data/generate.py --check    # fails if the files differ

Everything is written for this project from templates and arithmetic (no external data).
The persona is "Chef Kit", a kitchen assistant whose every answer has the house format

    Chef's note: <one or two short sentences with the correct answer>. Happy cooking!

for short cooking / unit-conversion questions (cups, spoons, ounces, pounds, oven
temperatures, butter sticks, cup-to-gram weights, recipe scaling). Conversions use:
1 cup = 240 ml = 16 tbsp, 1 tbsp = 15 ml = 3 tsp, 1 tsp = 5 ml, 1 oz = 28.35 g, 1 lb = 453.6 g,
1 kg = 2.2 lb, C = (F - 32) * 5 / 9, 1 stick of butter = 113 g = 8 tbsp, and per-cup
weights (all-purpose flour 125 g, granulated sugar 200 g, brown sugar 220 g, butter 227 g,
uncooked white rice 185 g, rolled oats 90 g).

Files (JSON Lines, UTF-8, one object per line):

* ``chat_sft/{train,test}.jsonl``: ``{"messages": [{"role": "user", "content": Q},
  {"role": "assistant", "content": A}]}``. No system message (SmolLM2's template adds
  its default one).
* ``preference/{train,test}.jsonl``: ``{"prompt": [{"role": "user", "content": Q}],
  "chosen": A_good, "rejected": A_bad}``; ``chosen``/``rejected`` are plain strings, the
  assistant reply. ``chosen`` is the house-format correct answer; ``rejected`` is either
  a house-format answer with a wrong number, the right number without the house format,
  or a rambling off-format reply (a third each, in turn).

Splits: questions are grouped by the underlying fact (e.g. "2 cups -> ml"), and the two
test files only use facts that appear in no training file, so test NLL measures the
format plus arithmetic on unseen values. No question text appears in two files.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

SEED = 20240611
HERE = Path(__file__).resolve().parent
SIZES = {"sft_train": 300, "sft_test": 40, "pref_train": 200, "pref_test": 30}

PREFIX = "Chef's note: "
SIGN_OFF = " Happy cooking!"


def house(body: str) -> str:
    return PREFIX + body + SIGN_OFF


def num(x: float, places: int = 1) -> str:
    """12.0 -> '12', 0.5 -> '0.5', 1.333 -> '1.3'."""
    r = round(x, places)
    return str(int(r)) if r == int(r) else f"{r:.{places}f}".rstrip("0")


CUP_AMOUNTS = [("1/4", 0.25), ("1/3", 1 / 3), ("1/2", 0.5), ("2/3", 2 / 3), ("3/4", 0.75), ("1", 1.0),
               ("1 1/2", 1.5), ("2", 2.0), ("2 1/2", 2.5), ("3", 3.0), ("4", 4.0)]
CUP_WEIGHTS = {"all-purpose flour": 125, "granulated sugar": 200, "brown sugar": 220, "butter": 227,
               "uncooked white rice": 185, "rolled oats": 90}
SCALE_INGREDIENTS = [("flour", "g"), ("sugar", "g"), ("butter", "g"), ("milk", "ml"), ("rice", "g"),
                     ("stock", "ml"), ("cream", "ml"), ("pasta", "g"), ("cheese", "g"), ("water", "ml")]
OPENERS = ["", "", "", "Quick question: ", "Hi! ", "Chef, "]


def cups(label: str) -> str:
    return f"{label} cup" if label in ("1", "1/4", "1/3", "1/2", "2/3", "3/4") else f"{label} cups"


def facts() -> list[tuple[str, list[str], str, str]]:
    """(fact key, question phrasings, correct answer body, wrong answer body)."""
    out: list[tuple[str, list[str], str, str]] = []
    for label, v in CUP_AMOUNTS:
        ml = v * 240
        out.append((f"cup-ml-{label}", [f"How many ml is {cups(label)}?", f"Convert {cups(label)} to millilitres.",
                                        f"What is {cups(label)} in ml?"],
                    f"{cups(label)} is {num(ml, 0)} ml, since 1 cup = 240 ml.",
                    f"{cups(label)} is {num(v * 200, 0)} ml, since 1 cup = 200 ml."))
    for label, v in CUP_AMOUNTS:
        out.append((f"cup-tbsp-{label}", [f"How many tablespoons are in {cups(label)}?", f"Convert {cups(label)} to tbsp.",
                                          f"{cups(label)} is how many tablespoons?"],
                    f"{cups(label)} is {num(v * 16)} tablespoons, since 1 cup = 16 tablespoons.",
                    f"{cups(label)} is {num(v * 10)} tablespoons, since 1 cup = 10 tablespoons."))
    for ml in [60, 80, 120, 160, 180, 300, 360, 480, 600, 720, 960]:
        c = ml / 240
        out.append((f"ml-cup-{ml}", [f"How many cups is {ml} ml?", f"Convert {ml} ml to cups.", f"What is {ml} ml in cups?"],
                    f"{ml} ml is {num(c, 2)} cups, since 1 cup = 240 ml.",
                    f"{ml} ml is {num(ml / 100, 2)} cups, since 1 cup = 100 ml."))
    for n in range(1, 13):
        t = "tablespoon" if n == 1 else "tablespoons"
        out.append((f"tbsp-tsp-{n}", [f"How many teaspoons are in {n} {t}?", f"Convert {n} tbsp to tsp.",
                                      f"{n} {t} is how many teaspoons?"],
                    f"{n} {t} equal {3 * n} teaspoons, since 1 tablespoon = 3 teaspoons.",
                    f"{n} {t} equal {2 * n} teaspoons, since 1 tablespoon = 2 teaspoons."))
    for n in range(1, 13):
        tsp = 3 * n
        out.append((f"tsp-tbsp-{tsp}", [f"How many tablespoons is {tsp} teaspoons?", f"Convert {tsp} tsp to tbsp.", f"{tsp} teaspoons is how many tablespoons?"],
                    f"{tsp} teaspoons make {n} tablespoon{'s' if n > 1 else ''}, since 3 teaspoons = 1 tablespoon.",
                    f"{tsp} teaspoons make {tsp * 3} tablespoons, since 1 teaspoon = 3 tablespoons."))
    for n in range(1, 13):
        out.append((f"tbsp-ml-{n}", [f"How many ml is {n} tbsp?", f"Convert {n} tablespoon{'s' if n > 1 else ''} to ml.", f"What is {n} tbsp in ml?"],
                    f"{n} tbsp is {15 * n} ml, since 1 tablespoon = 15 ml.",
                    f"{n} tbsp is {10 * n} ml, since 1 tablespoon = 10 ml."))
    for n in range(1, 17):
        out.append((f"oz-g-{n}", [f"How many grams is {n} oz?", f"Convert {n} ounce{'s' if n > 1 else ''} to grams.",
                                  f"What is {n} oz in grams?"],
                    f"{n} oz is about {num(n * 28.35, 0)} g, since 1 oz = 28.35 g.",
                    f"{n} oz is about {num(n * 35, 0)} g, since 1 oz = 35 g."))
    for g in [50, 100, 150, 200, 250, 300, 400, 500]:
        out.append((f"g-oz-{g}", [f"How many ounces is {g} g?", f"Convert {g} grams to ounces.", f"What is {g} g in oz?"],
                    f"{g} g is about {num(g / 28.35)} oz, since 1 oz = 28.35 g.",
                    f"{g} g is about {num(g / 20)} oz, since 1 oz = 20 g."))
    for lb in [0.5, 1, 1.5, 2, 2.5, 3, 4, 5]:
        out.append((f"lb-g-{lb}", [f"How many grams is {num(lb)} lb?", f"Convert {num(lb)} pounds to grams.", f"What is {num(lb)} lb in grams?"],
                    f"{num(lb)} lb is about {num(lb * 453.6, 0)} g, since 1 lb = 453.6 g.",
                    f"{num(lb)} lb is about {num(lb * 500 + 100, 0)} g, since 1 lb = 600 g."))
    for kg in [0.5, 1, 1.5, 2, 3]:
        out.append((f"kg-lb-{kg}", [f"How many pounds is {num(kg)} kg?", f"Convert {num(kg)} kg to pounds.", f"What is {num(kg)} kg in lb?"],
                    f"{num(kg)} kg is about {num(kg * 2.2)} lb, since 1 kg = 2.2 lb.",
                    f"{num(kg)} kg is about {num(kg * 1.5)} lb, since 1 kg = 1.5 lb."))
    for f in range(250, 501, 25):
        c = (f - 32) * 5 / 9
        out.append((f"f-c-{f}", [f"What is {f}°F in Celsius?", f"My oven says {f}°F. What is that in °C?",
                                 f"Convert {f} F to C."],
                    f"{f}°F is about {num(c, 0)}°C, using C = (F - 32) x 5/9.",
                    f"{f}°F is about {num(f / 2, 0)}°C, using C = F / 2."))
    for c in range(120, 251, 10):
        fahr = c * 9 / 5 + 32
        out.append((f"c-f-{c}", [f"What is {c}°C in Fahrenheit?", f"The recipe says {c}°C. What is that in °F?",
                                 f"Convert {c} C to F."],
                    f"{c}°C is about {num(fahr, 0)}°F, using F = C x 9/5 + 32.",
                    f"{c}°C is about {num(c * 2, 0)}°F, using F = C x 2."))
    for s in [0.5, 1, 1.5, 2, 3, 4]:
        word = "stick" if s <= 1 else "sticks"
        out.append((f"butter-{s}", [f"How many grams is {num(s)} {word} of butter?",
                                    f"How much is {num(s)} {word} of butter in grams and tablespoons?"],
                    f"{num(s)} {word} of butter is {num(s * 113, 0)} g, or {num(s * 8)} tablespoons.",
                    f"{num(s)} {word} of butter is {num(s * 250, 0)} g, or {num(s * 4)} tablespoons."))
    for ing, grams in CUP_WEIGHTS.items():
        for label, v in [("1/2", 0.5), ("1", 1.0), ("1 1/2", 1.5), ("2", 2.0), ("3", 3.0)]:
            out.append((f"cupw-{ing}-{label}", [f"How many grams is {cups(label)} of {ing}?",
                                                f"What does {cups(label)} of {ing} weigh?",
                                                f"Convert {cups(label)} of {ing} to grams."],
                        f"{cups(label)} of {ing} weighs about {num(v * grams, 0)} g.",
                        f"{cups(label)} of {ing} weighs about {num(v * 240, 0)} g."))
    rng = random.Random(SEED + 1)
    seen: set[str] = set()
    while len(seen) < 110:
        ing, unit = rng.choice(SCALE_INGREDIENTS)
        base = rng.choice([2, 4, 6, 8])
        target = rng.choice([s for s in (1, 2, 3, 4, 6, 8, 10, 12) if s != base])
        per = rng.choice([25, 50, 75, 100])
        amount = per * base
        key = f"scale-{ing}-{base}-{target}-{amount}"
        if key in seen or (amount * target) % base:
            continue
        seen.add(key)
        new = amount * target // base
        serv = "serving" if target == 1 else "servings"
        out.append((key, [f"A recipe for {base} uses {amount} {unit} of {ing}. How much for {target}?",
                          f"I need to scale {amount} {unit} of {ing} from {base} servings to {target}."],
                    f"For {target} {serv} use {new} {unit} of {ing} ({amount} {unit} x {target}/{base}).",
                    f"For {target} {serv} use {amount + target * 10} {unit} of {ing}."))
    return out


def rambling(body: str) -> str:
    return ("Well, that depends on a lot of things, like your kitchen and your measuring tools, "
            "so it is hard to say exactly. " + body.split(",")[0].rstrip(".") + " or so, roughly, I think.")


def build() -> dict[str, list[dict]]:
    rng = random.Random(SEED)
    groups = facts()
    rng.shuffle(groups)
    # test facts: one question each from facts used nowhere in training
    n_test = SIZES["sft_test"] + SIZES["pref_test"]
    test_groups, train_groups = groups[:n_test], groups[n_test:]
    test_q = [(rng.choice(qs), good, bad) for _, qs, good, bad in test_groups]
    train_q = [(q, good, bad) for _, qs, good, bad in train_groups for q in qs]
    rng.shuffle(train_q)
    need = SIZES["sft_train"] + SIZES["pref_train"]
    if len(train_q) < need:
        raise SystemExit(f"only {len(train_q)} training questions for {need} rows")

    def opener(q: str) -> str:
        o = rng.choice(OPENERS)
        return o + (q[0].lower() + q[1:] if o == "Chef, " else q)

    def sft(rows):
        return [{"messages": [{"role": "user", "content": opener(q)}, {"role": "assistant", "content": house(good)}]}
                for q, good, _ in rows]

    def pref(rows):
        out = []
        for k, (q, good, bad) in enumerate(rows):
            kind = k % 3
            rejected = house(bad) if kind == 0 else (good if kind == 1 else rambling(good))
            out.append({"prompt": [{"role": "user", "content": opener(q)}], "chosen": house(good), "rejected": rejected})
        return out

    a, b = SIZES["sft_train"], SIZES["sft_train"] + SIZES["pref_train"]
    return {
        "chat_sft/train.jsonl": sft(train_q[:a]),
        "chat_sft/test.jsonl": sft(test_q[: SIZES["sft_test"]]),
        "preference/train.jsonl": pref(train_q[a:b]),
        "preference/test.jsonl": pref(test_q[SIZES["sft_test"]:]),
    }


def dumps(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="verify the files instead of writing them")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    stale = []
    for rel, rows in build().items():
        path = args.out / rel
        text = dumps(rows)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(rel)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path} ({len(rows)} rows)")
    if stale:
        print("out of date: " + ", ".join(stale) + " (run recipes/data/generate.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
