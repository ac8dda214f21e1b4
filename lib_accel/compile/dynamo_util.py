"""Small views of dynamo's state: cache counters, graph count, limits, and a one-line error summary."""

from __future__ import annotations


def cache_counters() -> dict[str, int]:
    """Inductor FX-graph and AOT-autograd cache hits/misses so far (zeros where this torch has none)."""
    from torch._dynamo.utils import counters
    return {"FX graph cache hit": counters["inductor"]["fxgraph_cache_hit"],
            "FX graph cache miss": counters["inductor"]["fxgraph_cache_miss"],
            "AOT autograd cache hit": counters["aot_autograd"]["autograd_cache_hit"],
            "AOT autograd cache miss": counters["aot_autograd"]["autograd_cache_miss"]}


def dynamo_graph_count() -> int:
    from torch._dynamo.utils import counters
    return int(counters["stats"]["unique_graphs"])


def raise_dynamo_limits(graphs: int) -> None:
    """Let dynamo keep at least ``graphs`` graphs per code object, so our bound is the one that bites."""
    import torch._dynamo.config as config
    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(config, name) and getattr(config, name) < graphs + 2:
            setattr(config, name, graphs + 2)
    if hasattr(config, "accumulated_cache_size_limit") and config.accumulated_cache_size_limit < 4 * graphs:
        config.accumulated_cache_size_limit = 4 * graphs


def error_summary(error: BaseException) -> str:
    """One line naming the root cause (dynamo wraps backend errors; the inner one says what happened)."""
    inner = getattr(error, "inner_exception", None) or error.__cause__
    root = inner if isinstance(inner, BaseException) else error
    text = " ".join(str(root).split())[:300]
    return f"{type(root).__name__}: {text}" if text else type(root).__name__
