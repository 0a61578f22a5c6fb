"""Authentication-Results rendering (RFC 8601) and removal of fields carrying our authserv-id."""

from __future__ import annotations

import authres
import authres.dmarc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scatterguard.core.authresults import ours, render
from scatterguard.core.message import Message
from scatterguard.core.results import AuthReport, DkimResult, DmarcResult, Policy, Result, SpfResult

CONTEXT = authres.FeatureContext(authres.dmarc)


def parse(value: str) -> list[tuple[str, str, dict[str, str]]]:
    header = authres.core.AuthenticationResultsHeader.parse_value(CONTEXT, value)
    return [
        (r.method, r.result, {f"{p.type}.{p.name}": p.value for p in r.properties})
        for r in header.results
    ]


def sample(**overrides: object) -> AuthReport:
    values: dict[str, object] = {
        "spf": SpfResult(Result.PASS, "mailfrom", "sender.example"),
        "dkim": (
            DkimResult(Result.PASS, "sender.example", "s1", "rsa-sha256", b_prefix="AbCdEf12"),
        ),
        "dmarc": DmarcResult(Result.PASS, "sender.example", Policy.REJECT),
    }
    values.update(overrides)
    return AuthReport(**values)  # type: ignore[arg-type]


def test_render_parses_back() -> None:
    """The rendered value parses with authres into exactly the results we produced."""
    rendered = render("mx.rcpt.example", sample(), "sender.example")
    assert rendered.value.startswith("mx.rcpt.example; ")
    assert parse(rendered.value) == [
        ("spf", "pass", {"smtp.mailfrom": "sender.example"}),
        (
            "dkim",
            "pass",
            {
                "header.d": "sender.example",
                "header.s": "s1",
                "header.a": "rsa-sha256",
                "header.b": "AbCdEf12",
            },
        ),
        ("dmarc", "pass", {"header.from": "sender.example", "policy.dmarc": "reject"}),
    ]


def test_field_is_folded_with_message_line_ending() -> None:
    """The field is folded one clause per line using the message's own line ending."""
    field = render("mx.rcpt.example", sample(), "sender.example").field(b"\r\n")
    assert field.startswith(b"Authentication-Results: mx.rcpt.example;\r\n\tspf=pass")
    assert all(len(line) < 200 for line in field.split(b"\r\n"))
    assert not field.endswith(b"\n")


def test_null_sender_uses_helo() -> None:
    """With the null reverse-path SPF is reported for smtp.helo."""
    rep = sample(spf=SpfResult(Result.NONE, "helo", "mx.sender.example"), dkim=())
    assert parse(render("mx", rep, None).value)[:2] == [
        ("spf", "none", {"smtp.helo": "mx.sender.example"}),
        ("dkim", "none", {}),
    ]


@pytest.mark.parametrize(
    "hostile",
    [
        pytest.param("evil.example; dkim=pass header.d=bank.example", id="semicolon"),
        pytest.param("evil.example (comment) dmarc=pass", id="comment"),
        pytest.param('evil.example" dkim=pass', id="quote"),
        pytest.param("evil.example\r\nX-Injected: 1", id="crlf"),
    ],
)
def test_hostile_values_are_dropped(hostile: str) -> None:
    """A value that is not a plain domain name never reaches the header."""
    rep = sample(
        spf=SpfResult(Result.FAIL, "mailfrom", hostile, reason=hostile),
        dkim=(
            DkimResult(Result.FAIL, hostile, hostile, hostile, reason=hostile, b_prefix=hostile),
        ),
        dmarc=DmarcResult(Result.FAIL, hostile, Policy.REJECT, reason=hostile),
    )
    rendered = render("mx", rep, hostile)
    assert hostile not in rendered.value
    assert [(m, r) for m, r, _ in parse(rendered.value)] == [
        ("spf", "fail"),
        ("dkim", "fail"),
        ("dmarc", "fail"),
    ]


@pytest.mark.parametrize(
    ("dkim", "methods"),
    [
        pytest.param(None, [("spf", "pass")], id="neither-evaluated"),
        pytest.param((), [("spf", "pass"), ("dkim", "none")], id="no-signature-but-no-dmarc"),
    ],
)
def test_a_method_not_evaluated_is_omitted(
    dkim: tuple[DkimResult, ...] | None, methods: list[tuple[str, str]]
) -> None:
    """DKIM or DMARC not evaluated gets no clause at all: never a "none" that was not found."""
    rendered = render("mx", sample(dkim=dkim, dmarc=None), "sender.example")
    assert [(m, r) for m, r, _ in parse(rendered.value)] == methods
    assert "dmarc" not in rendered.value


def test_reports_every_domain_the_checks_evaluate() -> None:
    """A label ending in "_", which SPF and DMARC evaluate, is reported too (core.domains)."""
    domain = "bounce_.sender.example"
    rep = sample(
        spf=SpfResult(Result.PASS, "mailfrom", domain),
        dkim=(DkimResult(Result.PASS, domain, "s_", "rsa-sha256"),),
        dmarc=DmarcResult(Result.PASS, domain, Policy.NONE),
    )
    assert parse(render("mx", rep, domain).value) == [
        ("spf", "pass", {"smtp.mailfrom": domain}),
        ("dkim", "pass", {"header.d": domain, "header.s": "s_", "header.a": "rsa-sha256"}),
        ("dmarc", "pass", {"header.from": domain, "policy.dmarc": "none"}),
    ]


@pytest.mark.parametrize(
    ("field", "removed"),
    [
        pytest.param(b"Authentication-Results: mx.rcpt.example; spf=pass", True, id="ours"),
        pytest.param(b"Authentication-Results: MX.RCPT.EXAMPLE; dkim=pass", True, id="case"),
        pytest.param(b"Authentication-Results: (c) mx.rcpt.example (x); none", True, id="comments"),
        pytest.param(b'Authentication-Results: "mx.rcpt.example"; none', True, id="quoted"),
        pytest.param(b"Authentication-Results:\n mx.rcpt.example;\n spf=pass", True, id="folded"),
        pytest.param(b"Authentication-Results: mx.other.example; spf=pass", False, id="other"),
        pytest.param(b"Authentication-Results: mx.rcpt.example.evil; spf=pass", False, id="suffix"),
        pytest.param(
            b"X-Authentication-Results: mx.rcpt.example; spf=pass", False, id="other-field"
        ),
    ],
)
def test_ours(field: bytes, removed: bool) -> None:
    """Only A-R fields whose authserv-id is ours are selected for removal (RFC 8601 §5)."""
    message = Message(field + b"\nSubject: x\n\nbody\n")
    assert bool(list(ours(message, "mx.rcpt.example"))) is removed


text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@given(domain=text, selector=text, explanation=text, algorithm=text, b=text)
def test_nothing_generated_fakes_a_result(
    domain: str, selector: str, explanation: str, algorithm: str, b: str
) -> None:
    """No From domain, selector or SPF explanation makes the header parse into another result."""
    rep = AuthReport(
        spf=SpfResult(Result.SOFTFAIL, "mailfrom", domain, reason=explanation),
        dkim=(
            DkimResult(Result.FAIL, domain, selector, algorithm, reason=explanation, b_prefix=b),
        ),
        dmarc=DmarcResult(Result.NONE, domain, None, reason=explanation),
    )
    parsed = parse(render("mx.rcpt.example", rep, domain).value)
    assert [(m, r) for m, r, _ in parsed] == [
        ("spf", "softfail"),
        ("dkim", "fail"),
        ("dmarc", "none"),
    ]
    for _, _, props in parsed:
        for value in props.values():
            assert value in (domain, selector, algorithm, b)
