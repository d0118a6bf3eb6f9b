"""Searching a STAC API for scenes (the ``stac_search:`` entries of batch catalogs).

pystac-client sends the search; geoseg checks what it can before and after it:

- a ``filter`` (CQL2 text such as ``eo:cloud_cover < 20``, or CQL2 JSON) is parsed
  locally (the ``cql2`` package): an invalid one is a one-line error before any request,
  since some APIs answer an unparsable filter with every Item. The search is a POST when
  the API advertises one (else a GET), and pystac-client sends the filter in the
  language of the method (cql2-text for GET, cql2-json for POST);
- a ``query`` (the Query extension: ``{"eo:cloud_cover": {"lt": 20}}``) must use the
  extension's operators. It is sent as such to an API that declares the Query extension,
  as the equivalent CQL2 filter (and-ed with the ``filter``) to one that declares only the
  Filter extension, and to an API that declares neither as such first, then, if the API
  refuses or ignores it, as that filter (rustac's API declares neither, answers a query with
  "query is not implemented" and evaluates filters; the Query extension is deprecated in
  favour of Filter);
- an API that refuses the search (HTTP 4xx/5xx, e.g. one without the Query extension) is
  a one-line error with the status and the server's message;
- when the API does not declare the Filter (Query) extension in its conformance classes,
  the Items it returns are checked against the filter (query): an API that ignores them
  returns Items that do not match, which is an error, not a batch over scenes the catalog
  excluded (some APIs evaluate filters without declaring it: rustac's DuckDB backend).
  An API that declares the extension is trusted (cql2's evaluation of exotic operators
  need not agree with the server's). An API that answers no Item at all to a filter it
  does not implement cannot be told from a search that matches nothing.
"""

from __future__ import annotations

import json
import re
import warnings
from typing import Any

from geoseg.errors import InputError

from .remote import display_url

#: The Query extension's operators, as CQL2 (``like`` patterns for the string ones).
QUERY_OPS = ("eq", "neq", "lt", "lte", "gt", "gte", "startsWith", "endsWith", "contains", "in")
_CQL2_OPS = {"eq": "=", "neq": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
_EXAMPLE = '"eo:cloud_cover < 20"'


def _cql2():
    try:
        import cql2
    except ImportError:
        raise InputError("a stac_search filter or query needs the cql2 package: pip install 'geoseg[stac]'") from None
    return cql2


def _short(value: Any, n: int = 80) -> str:
    s = value if isinstance(value, str) else json.dumps(value)
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 3] + "..."


def parse_filter(value: str | dict):
    """The ``cql2.Expr`` of a CQL2 text or JSON filter.

    Raises:
        InputError: not valid CQL2 (one line: where and what was expected).
    """
    cql2 = _cql2()
    if not isinstance(value, (str, dict)):
        raise InputError(f"filter must be CQL2 text (e.g. {_EXAMPLE}) or CQL2 JSON, got {type(value).__name__}")
    try:
        expr = cql2.Expr(value) if isinstance(value, str) else cql2.parse_json(json.dumps(value))
        expr.validate()
    except Exception as exc:  # noqa: BLE001 - cql2 raises ParseError, ValidationError and plain Exception
        raise InputError(f"filter {_short(value)!r} is not valid CQL2 ({_parse_problem(str(exc))}): write e.g. {_EXAMPLE}") from None
    return expr


def _parse_problem(message: str) -> str:
    """cql2's (pest's) multi-line parse error as a few words: where, and what it expected."""
    where = re.search(r"-->\s*(\d+):(\d+)", message)
    expected = re.search(r"=\s*(expected .*)", message)
    if where and expected:
        return f"at column {where.group(2)}: {_short(expected.group(1), 120)}"
    return _short(message, 160)


def query_filter(query: dict) -> dict:
    """A Query-extension ``query`` as the equivalent CQL2 JSON (to check the Items with).

    Raises:
        InputError: not ``{property: {operator: value}}`` with the extension's operators.
    """
    if not isinstance(query, dict) or not query:
        raise InputError(f'query must map properties to {{operator: value}}, e.g. {{"eo:cloud_cover": {{"lt": 20}}}}, got {_short(query)}')
    args = []
    for prop, ops in query.items():
        if not isinstance(ops, dict) or not ops:
            raise InputError(f'query: {prop} needs {{operator: value}} (e.g. {{"lt": 20}}), got {_short(ops)}')
        ref = {"property": prop}
        for op, value in ops.items():
            if op in _CQL2_OPS:
                args.append({"op": _CQL2_OPS[op], "args": [ref, value]})
            elif op in ("startsWith", "endsWith", "contains") and isinstance(value, str):
                literal = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")  # CQL2 LIKE's escapes
                pattern = {"startsWith": "{}%", "endsWith": "%{}", "contains": "%{}%"}[op].format(literal)
                args.append({"op": "like", "args": [ref, pattern]})
            elif op == "in" and isinstance(value, list):
                args.append({"op": "in", "args": [ref, value]})
            else:
                raise InputError(f"query: operator {op!r} of {prop} with {_short(value)} is not one of the Query extension's "
                                 f"({', '.join(QUERY_OPS)}; startsWith/endsWith/contains take text, in a list)")
    return args[0] if len(args) == 1 else {"op": "and", "args": args}


def _matches(expr, item: dict) -> bool | None:
    """Whether an Item satisfies ``expr``; None when cql2 cannot evaluate it on this Item
    (e.g. a property the Item lacks)."""
    try:
        return bool(expr.matches(item))
    except Exception:  # noqa: BLE001 - "could not reduce expression to boolean"
        return None


def _api_problem(exc: BaseException) -> tuple[int | None, str]:
    """The HTTP status and the server's message of a failed search."""
    status = getattr(exc, "status_code", None)
    text = str(exc)
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        text = str(body.get("description") or body.get("detail") or body.get("message") or body.get("code") or text)
    return status, " ".join(text.split())[:200]


def _method(client) -> str:
    """POST when the API's landing page advertises it for search (or says nothing), else
    GET: pystac-client would POST to a GET-only API."""
    methods = {(link.extra_fields.get("method") or "GET").upper() for link in client.get_links("search")}
    return "POST" if "POST" in methods or not methods else "GET"


def search(
    url: str,
    *,
    collections: list[str] | None = None,
    bbox: list[float] | None = None,
    intersects: dict | None = None,
    datetime: str | None = None,
    query: dict | None = None,
    filter: str | dict | None = None,  # noqa: A002 - the STAC API's name
    max_items: int | None = None,
) -> list[dict]:
    """The Items (as dicts) a STAC API search returns, checked against ``filter``/``query``.

    Raises:
        InputError: pystac-client or cql2 missing; an invalid filter or query; the API
            refused the search or could not be reached; the API ignored the filter or
            query (returned Items that do not match them). One line each.
    """
    try:
        from pystac_client import Client
    except ImportError:
        raise InputError("stac_search needs pystac-client: pip install 'geoseg[stac]'") from None
    checks = []  # (what, the catalog's text, expression)
    if filter is not None:
        checks.append(("filter", filter, parse_filter(filter)))
    as_filter = None
    if query is not None:
        as_filter = query_filter(query)
        checks.append(("query", query, _cql2().parse_json(json.dumps(as_filter))))
        if filter is not None:
            as_filter = {"op": "and", "args": [checks[0][2].to_json(), as_filter]}
    common = {k: v for k, v in {
        "collections": collections, "bbox": bbox, "intersects": intersects, "datetime": datetime, "max_items": max_items,
    }.items() if v is not None}
    where = display_url(url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pystac-client's "does not conform" warnings
        try:
            client = Client.open(url)
        except Exception as exc:  # noqa: BLE001 - pystac-client raises many kinds
            raise _refused(exc, where, ()) from None
        from pystac_client.conformance import ConformanceClasses

        declares = {c: client.conforms_to(ConformanceClasses[c]) for c in ("FILTER", "QUERY")}
        # how to send a query: as such to an API with the Query extension, as the equivalent
        # CQL2 filter to one with only the Filter extension, and to an API that declares
        # neither (some implement one without saying so: rustac's answers a query with
        # "query is not implemented" and evaluates filters) as such, then as a filter
        if query is None or declares["QUERY"]:
            attempts = [(query, filter)]
        elif declares["FILTER"]:
            attempts = [(None, as_filter)]
        else:
            attempts = [(query, filter), (None, as_filter)]
        for n, (sent_query, sent_filter) in enumerate(attempts):
            last = n == len(attempts) - 1
            query_as_filter = query is not None and sent_query is None
            kw = {**common, **{k: v for k, v in (("query", sent_query), ("filter", sent_filter)) if v is not None}}
            try:
                items = list(client.search(method=_method(client), **kw).items_as_dicts())
            except Exception as exc:  # noqa: BLE001 - pystac-client raises many kinds
                if last:
                    raise _refused(exc, where, checks, as_filter=query_as_filter) from None
                continue
            ignored = _ignored(items, checks, where, declares, as_filter=query_as_filter)
            if ignored is None:
                return items
            if last:
                raise InputError(ignored)
    raise AssertionError("unreachable")  # pragma: no cover


def _refused(exc: BaseException, where: str, checks, as_filter: bool = False) -> InputError:
    """The one-line error of a search the API refused or that could not be sent."""
    status, message = _api_problem(exc)
    said = f"HTTP {status}: {message}" if status else message
    if status in (400, 422, 500, 501) and checks:
        names = " and ".join(c[0] for c in checks)
        sent = " (sent as a CQL2 filter, the API not declaring the Query extension)" if as_filter else ""
        extensions = "Filter" if as_filter else " and ".join(c[0].capitalize() for c in checks)
        hint = (f"the API refused the search: check the {names}{sent} and that the API implements "
                f"the {extensions} extension (its /conformance)")
    elif status == 404:
        hint = "check the url: it must be the API's root (its landing page)"
    else:
        hint = "check the url and the search fields"
    return InputError(f"STAC API search at {where} failed ({said}): {hint}")


def _ignored(items: list[dict], checks, where: str, declares: dict[str, bool], as_filter: bool) -> str | None:
    """Why the Items show that the API ignored the filter or query, or None. An API that
    declares the extension a check went out through is trusted."""
    for what, given, expr in checks:
        extension = "Filter" if what == "filter" or as_filter else "Query"
        if declares[extension.upper()]:
            continue
        bad = [item.get("id", "?") for item in items if _matches(expr, item) is False]
        if bad:
            sent = " (sent as given and as a CQL2 filter)" if what == "query" and as_filter else ""
            return (
                f"the STAC API at {where} ignored the {what} {_short(given)}{sent}: {len(bad)} of the {len(items)} Items "
                f"it returned do not match it (e.g. {bad[0]}); it does not implement the {extension} extension: "
                f"search an API that does, or leave out {what}: and pick the scenes otherwise"
            )
    return None
