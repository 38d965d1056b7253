"""Redaction of long log lines: entrykit's against its previous implementation and a naive loop.

    python bench/redaction.py [--runs 5] [--secrets 50]

Every line entrykit writes is redacted: each loaded secret value (and its escaped forms) and
every URL password become ``***``. Three implementations, on the same text, with SECRETS
secrets loaded (random 12-32 character values, one in four holding URL delimiters):

- entrykit: ``entrykit.logs.redact`` (one ``str.find`` scan per registered form, spans merged;
  URL patterns anchored where a scheme starts, so no position is scanned twice);
- previous: the implementation before this change, copied below (one alternation of all
  secrets, then a URL pattern that backtracks over every run of letters);
- naive: ``text.replace(secret, "***")`` for each secret. It masks no URL password and leaves
  a secret partly shown when two overlap; the floor for plain substring search.

Texts: a 1 MB log line of words, URLs and numbers holding a few of the secrets; and the line
`entrykit run -- true $(python3 -c "print('x'*N)")` logs before exec, one word of N letters
(the previous implementation took 25 s for N = 120 000; it is measured at smaller N here, and
its time for 1 MB is estimated from its quadratic growth). Median of RUNS runs each.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import string
import threading
import time
from collections.abc import Callable
from urllib.parse import quote

from entrykit import logs

# --- the previous implementation (entrykit before the linear redaction), verbatim ----------

MASK = "***"
MIN_SECRET_LENGTH = 4
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^\s/]*@")
_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_pattern: re.Pattern[str] | None = None


def previous_add_secret(value: str) -> None:
    global _pattern
    if len(value) < MIN_SECRET_LENGTH:
        return
    with _secrets_lock:
        _secrets.update({value, quote(value, safe="")})
        ordered = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(secret) for secret in ordered))


def previous_redact(text: str) -> str:
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    return _URL_PASSWORD.sub(lambda m: m.group("head") + MASK + "@", text)


# --- the naive loop ---------------------------------------------------------------------------

_naive_secrets: list[str] = []


def naive_redact(text: str) -> str:
    for secret in _naive_secrets:
        text = text.replace(secret, MASK)
    return text


# --- texts --------------------------------------------------------------------------------------


def make_secrets(count: int, rng: random.Random) -> list[str]:
    alphabet = string.ascii_letters + string.digits
    values = []
    for index in range(count):
        value = "".join(rng.choices(alphabet, k=rng.randint(12, 32)))
        if index % 4 == 0:  # a password with URL delimiters in it
            value = value[:5] + rng.choice("/@%:") + value[5:]
        values.append(value)
    return values


def log_line(size: int, secrets: list[str], rng: random.Random) -> str:
    """Words, numbers and URLs (some with passwords), with a secret every ~100 kB."""
    words = ["database", "ready", "after", "tries", "GET", "/api/v1/items", "200", "wait"]
    parts: list[str] = []
    length = 0
    while length < size:
        roll = rng.random()
        if roll < 0.001:
            part = rng.choice(secrets)
        elif roll < 0.02:
            part = f"postgresql://app:{rng.choice(secrets)[:8]}x@db:5432/app?sslmode=require"
        elif roll < 0.05:
            part = str(rng.randint(0, 10**6))
        else:
            part = rng.choice(words)
        parts.append(part)
        length += len(part) + 1
    return " ".join(parts)[:size]


def median_ms(function: Callable[[str], str], text: str, runs: int) -> float:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        function(text)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--secrets", type=int, default=50)
    args = parser.parse_args()

    rng = random.Random(7)
    secrets = make_secrets(args.secrets, rng)
    for secret in secrets:
        logs.add_secret(secret)
        previous_add_secret(secret)
        _naive_secrets.append(secret)

    megabyte = 1_000_000
    rows = [
        ("1 MB log line (words, URLs, secrets)", log_line(megabyte, secrets, rng), True),
        ("one 30 000-letter word", "true " + "x" * 30_000, True),
        ("one 60 000-letter word", "true " + "x" * 60_000, True),
        ("one 1 MB word", "true " + "x" * megabyte, False),
    ]
    print(f"redaction, {args.secrets} secrets loaded, median of {args.runs} runs\n")
    print("| text | entrykit ms | previous ms | naive replace ms | previous / entrykit |")
    print("|---|---:|---:|---:|---:|")
    previous_60k = 0.0
    for name, text, run_previous in rows:
        assert MASK not in logs.redact(text) or name.startswith("1 MB log")
        ours = median_ms(logs.redact, text, args.runs)
        naive = median_ms(naive_redact, text, args.runs)
        if run_previous:
            previous = median_ms(previous_redact, text, max(1, args.runs // 2))
            shown = f"{previous:.1f}"
            if "60 000" in name:
                previous_60k = previous
        else:  # quadratic: scale the 60 000-letter time by the square of the length ratio
            previous = previous_60k * (len(text) / 60_005) ** 2
            shown = f"~{previous:,.0f} (estimated)"
        print(f"| {name} | {ours:.1f} | {shown} | {naive:.1f} | {previous / ours:,.0f}x |")


if __name__ == "__main__":
    main()
