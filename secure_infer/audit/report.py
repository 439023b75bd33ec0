"""Audit reports: a JSON document (docs/audit-report.schema.json), a self-contained HTML page
(plots as inline SVG from matplotlib, no external resources), and a terminal summary.

The HTML and the terminal summary are rendered from the JSON document alone, so a report can be
re-rendered later from its JSON.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SCHEMA_ID",
    "histogram",
    "new_report",
    "render_html",
    "summary",
    "write_reports",
]

SCHEMA_ID = "secure-infer-audit-report/1"


def new_report(
    kind: str, cfg: Any, provenance: dict[str, Any], threat_model: str
) -> dict[str, Any]:
    """The fields every report has; the runner fills in its own sections."""
    from secure_infer import __version__

    return {
        "schema": SCHEMA_ID,
        "kind": kind,
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "tool": {"name": "secure-infer", "version": __version__},
        "threat_model": threat_model,
        "assumptions": [],
        "config": cfg.to_dict(),
        "provenance": provenance,
    }


def histogram(scores: np.ndarray, member: np.ndarray, bins: int = 40) -> dict[str, list[float]]:
    """Shared-edge histograms of member and non-member scores (1st-99th percentile range)."""
    lo, hi = np.percentile(scores, [1, 99])
    if hi <= lo:
        lo, hi = float(scores.min()), float(scores.max()) + 1e-9
    edges = np.linspace(lo, hi, bins + 1)
    clipped = np.clip(scores, lo, hi)
    return {
        "edges": edges.tolist(),
        "members": np.histogram(clipped[member], edges)[0].astype(float).tolist(),
        "non_members": np.histogram(clipped[~member], edges)[0].astype(float).tolist(),
    }


def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _roc_svg(attacks: list[dict[str, Any]], title: str) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    floor = 1e-4
    for a in attacks:
        fpr = np.maximum(a["roc"]["fpr"], floor)
        tpr = np.maximum(a["roc"]["tpr"], floor)
        ax.plot(fpr, tpr, label=f"{a['name']} (AUC {a['auc']:.3f})")
    ax.plot([floor, 1], [floor, 1], "k--", lw=0.8, label="chance")
    ax.set(xscale="log", yscale="log", xlim=(floor, 1), ylim=(floor, 1))
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(fontsize=8, loc="lower right")
    return _svg(fig)


def _hist_svg(attacks: list[dict[str, Any]]) -> str:
    import matplotlib.pyplot as plt

    cols = min(3, len(attacks))
    rows = -(-len(attacks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat[len(attacks) :]:
        ax.set_visible(False)
    for ax, a in zip(axes.flat, attacks, strict=False):
        h = a["histogram"]
        edges = np.asarray(h["edges"])
        ax.stairs(h["non_members"], edges, fill=True, alpha=0.5, label="non-members")
        ax.stairs(h["members"], edges, fill=True, alpha=0.5, label="members")
        ax.set(title=a["name"], xlabel="score")
    axes[0][0].set_ylabel("count")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return _svg(fig)


def _ratio_svg(dist: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name in dist["attacks"]:
        rows = sorted((r for r in dist["results"] if r["attack"] == name), key=lambda r: r["ratio"])
        x = [r["ratio"] for r in rows]
        acc = np.array([r["accuracy"] for r in rows])
        ci = np.array([r["accuracy_ci"] for r in rows]).reshape(-1, 2)
        ax1.errorbar(
            x, acc, yerr=[acc - ci[:, 0], ci[:, 1] - acc], marker="o", capsize=3, label=name
        )
        nl = np.array([r["n_leaked"] for r in rows])
        nci = np.array([r["n_leaked_ci"] for r in rows]).reshape(-1, 2)
        ax2.errorbar(
            x, nl, yerr=[nl - nci[:, 0], nci[:, 1] - nl], marker="o", capsize=3, label=name
        )
    ax1.axhline(0.5, color="k", ls="--", lw=0.8)
    ax1.set(xlabel=f"ratio of {dist['attribute']} (vs {dist['base_ratio']})",
            ylabel="distinguishing accuracy", ylim=(0.4, 1.02))  # fmt: skip
    ax2.set(xlabel=f"ratio of {dist['attribute']} (vs {dist['base_ratio']})", ylabel="n_leaked",
            yscale="symlog")  # fmt: skip
    ax1.legend(fontsize=8)
    return _svg(fig)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


NOT_MEASURABLE = "not measurable at this FPR (TPR at FPR=0 shown)"


def _measurable(a: dict[str, Any], point: str) -> bool:
    """Whether ``a``'s TPR at FPR ``point`` is a measurement (FPR >= 1/n_negatives)."""
    flags = a.get("tpr_at_fpr_measurable")
    if flags is not None:
        return bool(flags[point])
    return float(point) * a["n_negatives"] >= 1 - 1e-9  # reports written before the flag


def _tpr(a: dict[str, Any], point: str, digits: int = 4) -> str:
    """TPR at FPR ``point``; marked when only the TPR at FPR 0 could be measured."""
    value = f"{a['tpr_at_fpr'][point]:.{digits}f}"
    return value if _measurable(a, point) else f"{value}*"


def _tpr_note(attacks: list[dict[str, Any]]) -> str:
    """The footnote for starred TPR values ('' when every value is a measurement)."""
    by_n: dict[int, set[str]] = {}
    for a in attacks:
        for p in a["tpr_at_fpr"]:
            if not _measurable(a, p):
                by_n.setdefault(a["n_negatives"], set()).add(p)
    if not by_n:
        return ""
    where = "; ".join(
        f"FPR {' and '.join(f'{float(p):.3g}' for p in sorted(ps, key=float))} < "
        f"1/{n} = {1 / n:.3g} with {n} non-members"
        for n, ps in sorted(by_n.items())
    )
    return f"* {NOT_MEASURABLE}: {where}."


def _attack_rows(attacks: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [a["name"], a["auc"], _tpr(a, "0.001"), _tpr(a, "0.01"),
         a["balanced_accuracy"], f"{a['n_positives']}/{a['n_negatives']}", a["wall_s"]]
        for a in attacks
    ]  # fmt: skip


_ATTACK_HEADER = [
    "attack", "AUC", "TPR@0.1%FPR", "TPR@1%FPR", "best bal. acc. (oracle threshold)", "pos/neg",
    "wall s",
]  # fmt: skip

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;
font-size:13px;text-align:right}th{background:#f2f2f2}pre{background:#f7f7f7;padding:1em;
overflow:auto;font-size:12px}
.note{background:#fff6d6;padding:.6em 1em;border-left:4px solid #e0b400}
figure{margin:0 0 1.5em}svg{max-width:100%;height:auto}"""


def render_html(report: dict[str, Any]) -> str:
    """A self-contained HTML page for ``report`` (inline SVG plots, inline CSS, no scripts)."""
    kind = report["kind"]
    parts = [
        f"<h1>secure-infer privacy audit: {html.escape(kind)}</h1>",
        f"<p>created {html.escape(report['created_utc'])} by secure-infer "
        f"{html.escape(report['tool']['version'])}</p>",
        f"<h2>Threat model</h2><p>{html.escape(report['threat_model'])}</p>",
    ]
    if report["assumptions"]:
        items = "".join(f"<li>{html.escape(a)}</li>" for a in report["assumptions"])
        parts.append(f"<div class='note'><b>Assumed, not verified:</b><ul>{items}</ul></div>")
    if "target" in report:
        t = report["target"]
        parts.append("<h2>Target</h2>" + _table(["key", "value"], [[k, v] for k, v in t.items()]))
    if report.get("attacks"):
        unit = report.get("risk_table", {}).get("unit", "row")
        parts.append(f"<h2>Attacks ({html.escape(unit)}-level membership)</h2>")
        parts.append(_table(_ATTACK_HEADER, _attack_rows(report["attacks"])))
        note = _tpr_note(report["attacks"])
        if note:
            parts.append(f"<p class='note' id='tpr-note'>{html.escape(note)}</p>")
        parts.append(
            "<p>Best balanced accuracy: over all thresholds, the threshold picked on these "
            "scores themselves (an oracle threshold), so it is optimistic.</p>"
        )
        parts.append(
            f"<figure class='plot' id='roc'>{_roc_svg(report['attacks'], 'ROC (log-log)')}</figure>"
        )
        parts.append("<h3>Score distributions</h3>")
        parts.append(f"<figure class='plot' id='hist'>{_hist_svg(report['attacks'])}</figure>")
    if "distribution" in report:
        d = report["distribution"]
        parts.append(f"<h2>Distribution inference: ratio of {html.escape(d['attribute'])}</h2>")
        parts.append(f"<figure class='plot' id='ratio'>{_ratio_svg(d)}</figure>")
        parts.append(_table(
            ["ratio", "attack", "accuracy", "95% CI", "n_leaked", "95% CI", "n_count_test",
             "95% CI", "victims"],
            [[r["ratio"], r["attack"], r["accuracy"],
              "[{:.3f}, {:.3f}]".format(*r["accuracy_ci"]), r["n_leaked"],
              "[{:.3g}, {:.3g}]".format(*r["n_leaked_ci"]), r.get("n_count_test", ""),
              "[{:.3g}, {:.3g}]".format(*r["n_count_test_ci"]) if "n_count_test_ci" in r else "",
              r["n_victims"]]
             for r in d["results"]],
        ))  # fmt: skip
        parts.append(
            "<p>n_leaked: Suri &amp; Evans' definition, the rows sampled from the training "
            "distribution at which their bound on any test's accuracy equals the attack's "
            "accuracy. n_count_test: the rows at which the optimal test on the attribute count "
            "reaches that accuracy (normal approximation); larger, since the bound is not "
            "tight.</p>"
        )
    if "risk_table" in report:
        rt = report["risk_table"]
        rows = rt["rows"]
        keys = list(rows[0]) if rows else ["id"]
        parts.append(
            f"<h2>Highest-risk {html.escape(rt['unit'])}s (by {html.escape(rt['attack'])})</h2>"
            + _table(keys, [[r[k] for k in keys] for r in rows])
        )
    if "shadows" in report:
        s = report["shadows"]
        parts.append(
            "<h2>Shadow models</h2>" + _table(["key", "value"], [[k, v] for k, v in s.items()])
        )
    parts.append("<h2>Data provenance</h2>")
    parts.append(_table(["key", "value"], [[k, v] for k, v in report["provenance"].items()]))
    parts.append(
        f"<h2>Configuration</h2><pre>{html.escape(json.dumps(report['config'], indent=2))}</pre>"
    )
    body = "\n".join(parts)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>secure-infer audit: {html.escape(kind)}</title><style>{_CSS}</style></head>"
        f"<body>{body}</body></html>\n"
    )


def summary(report: dict[str, Any]) -> str:
    """A short plain-text summary for the terminal."""
    lines = [f"secure-infer audit: {report['kind']}  ({report['provenance'].get('dataset', '')})"]
    if "target" in report:
        t = report["target"]
        lines.append(
            f"target: {t['description']}  train acc {t['train_accuracy']:.3f}  "
            f"test acc {t['test_accuracy']:.3f}"
        )
    if report.get("attacks"):
        lines.append(f"{'attack':<16}{'AUC':>8}{'TPR@0.1%':>10}{'TPR@1%':>9}")
        for a in report["attacks"]:
            lines.append(
                f"{a['name']:<16}{a['auc']:>8.4f}{_tpr(a, '0.001'):>10}{_tpr(a, '0.01'):>9}"
            )
        note = _tpr_note(report["attacks"])
        if note:
            lines.append(note)
    if "distribution" in report:
        lines.append(f"{'ratio':<7}{'attack':<16}{'accuracy':>9}{'n_leaked':>10}  95% CI")
        for r in report["distribution"]["results"]:
            lo, hi = r["n_leaked_ci"]
            lines.append(
                f"{r['ratio']:<7}{r['attack']:<16}{r['accuracy']:>9.3f}{r['n_leaked']:>10.3g}"
                f"  [{lo:.3g}, {hi:.3g}]"
            )
    return "\n".join(lines) + "\n"


def write_reports(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into ``out_dir``; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    jpath, hpath = out_dir / "report.json", out_dir / "report.html"
    jpath.write_text(json.dumps(report, indent=1) + "\n")
    hpath.write_text(render_html(report))
    return jpath, hpath
