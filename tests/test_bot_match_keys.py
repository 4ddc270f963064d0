"""Keyword rules found by key (0115_inbound_speed.sql): core.match_bot_rules answers exactly
as trying every rule in priority order would, for patterns longer and shorter than the
four-character key, at the start, middle and end of texts, in one batch."""

from __future__ import annotations

import random
import uuid

import psycopg
from psycopg.types.json import Jsonb

try:  # tests/ is a rootless directory under pytest's default import mode
    from sim_fixtures import NUMBERS
except ImportError:  # tests/ became a package
    from tests.sim_fixtures import NUMBERS

ONE = NUMBERS[0]
WORDS = ["cupom", "plano", "preço", "horário", "50%", "a_b", "oi", "x", "entrega", "sábado", "pedido 7", "ok"]


def number(db: psycopg.Connection) -> tuple[int, int]:
    tenant = db.execute("SELECT api.create_tenant(%s)", (f"tenant-{uuid.uuid4().hex[:8]}",)).fetchone()[0]
    number_id = db.execute("SELECT api.register_number(%s, %s, %s, %s, NULL, 80, %s)",
                           (tenant, ONE["phone_number_id"], ONE["waba_id"], ONE["token"],
                            ONE["display_phone_number"])).fetchone()[0]
    return tenant, number_id


def test_keyed_matching_equals_trying_every_rule_in_priority_order(db: psycopg.Connection) -> None:
    rng = random.Random(115)
    tenant, number_id = number(db)
    rules = []      # (priority, rule_id, kind, normalised pattern)
    for _ in range(120):
        kind = rng.choice(("starts_with", "contains", "contains", "exact"))
        pattern = " ".join(rng.sample(WORDS, rng.randint(1, 2)))
        if rng.random() < 0.3:
            pattern += str(rng.randrange(20))
        priority = rng.randrange(50)
        rule_id = db.execute("SELECT rule_id FROM api.save_bot_rule(%s, %s, %s, %s, %s, %s)",
                             (tenant, number_id, kind, pattern, Jsonb({"type": "text", "text": "r"}),
                              priority)).fetchone()[0]
        rules.append((priority, rule_id, kind, db.execute("SELECT core.normalize_text(%s)", (pattern,)).fetchone()[0]))
    assert db.execute("SELECT count(*) FILTER (WHERE match_key IS NULL), count(match_key) FROM core.bot_rules "
                      "WHERE number_id = %s AND kind IN ('starts_with', 'contains')", (number_id,)).fetchone() \
        > (0, 0)                                    # both paths are exercised
    texts = [" ".join(rng.choice(WORDS) + (str(rng.randrange(20)) if rng.random() < 0.3 else "")
                      for _ in range(rng.randint(1, 5))) for _ in range(400)]
    norms = [r[0] for r in db.execute("SELECT core.normalize_text(t) FROM unnest(%s::text[]) t", (texts,))]
    got = dict(db.execute("SELECT ord, rule_id FROM core.match_bot_rules(%s, %s, %s)",
                          ([number_id] * len(norms), norms, [False] * len(norms))).fetchall())

    def expected(norm: str) -> int | None:
        for _, rule_id, kind, pattern in sorted(rules):
            if (kind == "exact" and norm == pattern) or (kind == "starts_with" and norm.startswith(pattern)) \
                    or (kind == "contains" and pattern in norm):
                return rule_id
        return None

    want = {i + 1: expected(n) for i, n in enumerate(norms)}
    assert got == want
    assert sum(v is not None for v in want.values()) > 100          # most texts hit a rule
