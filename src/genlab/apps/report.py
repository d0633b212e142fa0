"""`genlab report RUN... --out report.html`: one self-contained HTML report card, runs side by side.

Each run is a column; each row one thing about it: the sample grid (or text), the loss curves, the
`genlab eval` figures beside the real-vs-real floor, the likelihood when the model has one, and the
utility (`utility.json`) and audit (`audit.json`) results when they have been computed, every
figure with its interval where it has one, a private run's privacy guarantee (epsilon spent,
delta, noise multiplier, accountant: the `dp` entry of `checkpoint/state.json`), and where it came from (checkpoint hash, seeds, genlab
version, the command). Images are embedded as base64 PNGs and the page has no script, font or
style sheet to fetch, so the file reads the same offline, attached to an e-mail or in ten years.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from genlab.errors import UserError
from genlab.files import atomic_write_text
from genlab.version import __version__

EVAL_KEYS = ("fd", "kid_mean", "precision", "recall", "density", "coverage", "class_accuracy",
             "mode_entropy")
LIKELIHOOD_KEYS = ("neg_elbo_nats", "neg_elbo_bpd", "iwae_nll_nats", "iwae_nll_bpd", "iwae_k",
                   "n_test", "likelihood")
TEXT_EVAL_KEYS = ("val_loss", "perplexity", "val_bpc", "val_tokens")
TEXT_CHARS = 1200  # of samples.txt shown

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px;
       color: #1d1d1f; background: #fafafa; }
h1 { font-size: 22px; margin: 0 0 4px; }
p.sub { color: #666; margin: 0 0 18px; }
table.card { border-collapse: collapse; background: #fff; box-shadow: 0 1px 3px #0002;
       table-layout: fixed; width: 100%; }
table.card col.key { width: 110px; }
table.card > tbody > tr > th { text-align: left; vertical-align: top; padding: 10px 12px;
       background: #f0f0f3; width: 120px; font-weight: 600; border-bottom: 1px solid #ddd; }
table.card > tbody > tr > td { vertical-align: top; padding: 10px 14px; border-bottom: 1px solid #ddd;
       border-left: 1px solid #eee; overflow-x: auto; }
table.card > thead th { padding: 10px 14px; text-align: left; background: #2b3a55; color: #fff;
       font-size: 15px; }
table.m { border-collapse: collapse; font-variant-numeric: tabular-nums; margin: 2px 0 6px; }
table.m th, table.m td { padding: 2px 10px 2px 0; text-align: left; font-size: 13px;
       overflow-wrap: break-word; }
.nw { white-space: nowrap; }
table.m th { color: #555; font-weight: 600; border-bottom: 1px solid #ccc; white-space: nowrap; }
img { max-width: 100%; image-rendering: pixelated; display: block; }
.muted { color: #777; font-size: 12px; }
.none { color: #999; font-style: italic; }
.flag { color: #b00020; font-weight: 600; }
.ok { color: #1b7f3b; font-weight: 600; }
pre { white-space: pre-wrap; font-size: 12px; background: #f6f6f6; padding: 8px; margin: 0;
      max-height: 260px; overflow: auto; }
code { font-size: 12px; }
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _num(x: Any, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool) or not isinstance(x, int | float):
        return _e(x)
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}g}"


def _ci(ci: Any) -> str:
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(isinstance(v, int | float)
                                                           for v in ci):
        return f"[{ci[0]:.3f}, {ci[1]:.3f}]"
    return ""


def _fraction(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, int | float) else "–"


def _img(png: bytes, alt: str, width: int | None = None) -> str:
    style = f' style="width:{width}px"' if width else ""
    data = base64.b64encode(png).decode()
    return f'<img alt="{_e(alt)}"{style} src="data:image/png;base64,{data}">'


def _table(header: Sequence[str] | None, rows: Sequence[Sequence[str]]) -> str:
    """A small table; `header` None for key-value rows."""
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="m">{head}{body}</table>'


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


NONE = '<span class="none">not computed</span>'


# --- the rows ---------------------------------------------------------------------------------------

def loss_png(rows: list[dict[str, Any]]) -> bytes | None:
    """Every logged "*loss" key against the step, as PNG bytes (None when nothing was logged)."""
    rows = [r for r in rows if "loss" in r and "step" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for r in rows for k in r if k.endswith("loss")})
    fig, ax = plt.subplots(figsize=(5.2, 3.0), dpi=100)
    for key in keys:
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float)]
        if pts:
            ax.plot(*zip(*pts), label=key, lw=1.2, marker="." if len(pts) < 20 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _samples(run: Path) -> str:
    png = run / "samples.png"
    if png.is_file():
        return _img(png.read_bytes(), "samples", 320)
    txt = run / "samples.txt"
    if txt.is_file():
        text = txt.read_text(errors="replace")
        more = " …" if len(text) > TEXT_CHARS else ""
        return f"<pre>{_e(text[:TEXT_CHARS])}{more}</pre>"
    return NONE


def _eval(report: dict[str, Any] | None) -> str:
    if report is None:
        return f'{NONE} <span class="muted">(genlab eval RUN)</span>'
    floor = report.get("floor") or {}
    rows = []
    for key in EVAL_KEYS:
        if report.get(key) is None and floor.get(key) is None:
            continue
        model, real = _num(report.get(key)), _num(floor.get(key))
        if key == "kid_mean":
            model += f" ± {_num(report.get('kid_std'), 2)}"
            real += f" ± {_num(floor.get('kid_std'), 2)}" if floor else ""
        rows.append([_e(key), model, real])
    for key in TEXT_EVAL_KEYS:
        if report.get(key) is not None:
            rows.append([_e(key), _num(report[key]), "–"])
    out = _table(["metric", "model", "floor (real vs real)"], rows) if rows else \
        '<span class="none">no sample-quality figures</span>'
    notes = [n for n in report.get("notes") or [] if isinstance(n, str)]
    if notes:
        out += "".join(f'<div class="muted">{_e(n)}</div>' for n in notes)
    net = report.get("feature_net")
    if net:
        out += (f'<div class="muted">features: {_e(net.get("name"))} net, sha256 '
                f'<code>{_e(str(net.get("sha256"))[:12])}</code>; FD is not FID; '
                f'n={_e(report.get("n"))}, seed {_e(report.get("seed"))}</div>')
    return out + _provenance(report.get("provenance"))


def _likelihood(report: dict[str, Any] | None) -> str:
    if not report or all(report.get(k) is None for k in LIKELIHOOD_KEYS[:4]):
        return '<span class="none">no likelihood (the model has none, or not evaluated)</span>'
    rows = [[_e(k), _num(report.get(k))] for k in LIKELIHOOD_KEYS if report.get(k) is not None]
    return _table(["quantity", "value"], rows) + '<div class="muted">on held-out test ' \
        'images; bpd = bits per dimension</div>'


def _generic(value: Any, depth: int = 0) -> str:
    """Any JSON value as nested tables (for utility.json, whose layout another command owns);
    a pair of numbers is shown as an interval."""
    if isinstance(value, dict):
        rows = []
        for k, v in value.items():
            rows.append([f"<b>{_e(k)}</b>", _ci(v) or _generic(v, depth + 1)])
        return _table(None, rows) if rows else "{}"
    if isinstance(value, list):
        if _ci(value):
            return _ci(value)
        return "<br>".join(_generic(v, depth + 1) for v in value[:50])
    return _num(value)


def _utility(report: dict[str, Any] | None) -> str:
    if report is None:
        return f'{NONE} <span class="muted">(genlab utility RUN)</span>'
    parts = []
    for key in ("arms", "paired_vs_R"):
        if key in report:
            parts.append(f"<div><b>{_e(key)}</b>{_generic(report[key])}</div>")
    rest = {k: v for k, v in report.items() if k not in ("arms", "paired_vs_R", "provenance")}
    if rest:
        parts.append(f'<details><summary class="muted">other fields</summary>{_generic(rest)}'
                     "</details>")
    return "".join(parts) + _provenance(report.get("provenance"))


def _attack_rows(attacks: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, a in attacks.items():
        low = (a.get("auc_ci95") or [0.5])[0]
        cls = "flag" if isinstance(low, int | float) and low > 0.5 else ""
        auc = (f'<span class="nw"><span class="{cls}">{_num(a.get("auc"), 3)}</span> '
               f'{_ci(a.get("auc_ci95"))}</span>')
        rows.append([f'<span class="nw">{_e(name)}</span>', auc,
                     _num(a.get("tpr_at_1pct_fpr"), 3), _num(a.get("tpr_at_0.1pct_fpr"), 3)])
    return rows


def _audit(run: Path, report: dict[str, Any] | None) -> str:
    if report is None:
        return f'{NONE} <span class="muted">(genlab audit RUN)</span>'
    parts = []
    if "ngram_overlap" in report:
        o = report["ngram_overlap"]
        parts.append(_table(["", f"{o.get('n')}-char windows verbatim in training text"],
                            [["generated", _fraction(o.get("generated"))],
                             ["held-out (baseline)", _fraction(o.get("heldout"))]]))
        parts.append(f'<div class="muted">training text {_e(report.get("n_train"))} characters, '
                     f'held-out {_e(report.get("n_heldout"))}; {_e(report.get("n_generated"))} '
                     f'samples, {_e(o.get("generated_windows"))} windows</div>')
    if report.get("closer_to_train"):
        c = report["closer_to_train"]
        flag = "flag" if c["ci95"][0] > 0.5 else "ok"
        parts.append(f'<div>closer to train than held-out: <span class="{flag}">'
                     f'{c["fraction"]:.3f}</span> {_ci(c["ci95"])} '
                     '<span class="muted">(0.5 = no sign of copying)</span></div>')
    nc = report.get("near_copies")
    if nc:
        flag = "flag" if nc["count"] and nc.get("ci95", [0])[0] > nc.get("baseline_fraction", 0) \
            else "ok"
        parts.append(f'<div>near-copies: <span class="{flag}">{nc["count"]}</span> of '
                     f'{_e(report.get("n_generated"))} ({_num(nc["fraction"], 3)} '
                     f'{_ci(nc.get("ci95"))}; held-out baseline {_num(nc.get("baseline_fraction"))})'
                     f' <span class="muted">ratio threshold {_num(nc["threshold"], 3)}</span></div>')
    if report.get("attacks"):
        parts.append(_table(["attack", "AUC [95%]", "TPR 1%", "TPR 0.1%"],
                            _attack_rows(report["attacks"])))
        parts.append('<div class="muted">TPR 1% / 0.1%: members found at 1% / 0.1% false '
                     "positives (– : too few non-members to measure)</div>")
    zu = report.get("data_copying") or {}
    if zu.get("zu") is not None:
        parts.append(f'<div>Meehan Z<sub>U</sub> ({_e(zu.get("space"))}): {_num(zu["zu"], 3)} '
                     '<span class="muted">(below −3: copying)</span></div>')
    if report.get("closer_to_train"):
        parts.append(f'<div class="muted">members {_e(report.get("n_train"))}, held-out '
                     f'{_e(report.get("n_heldout"))}, generated {_e(report.get("n_generated"))}'
                     "</div>")
    for note in report.get("notes") or []:
        if isinstance(note, str) and note.startswith("warning"):
            parts.append(f'<div class="flag" style="font-weight:400">{_e(note)}</div>')
    copies = run / "audit_copies.png"
    if copies.is_file():
        parts.append('<div class="muted">closest samples (left) beside their nearest training '
                     f'image (right):</div>{_img(copies.read_bytes(), "near copies", 360)}')
    return "".join(parts) + _provenance(report.get("provenance"))


def _privacy(run: Path, record: dict[str, Any]) -> str:
    """A private run's guarantee, from the `dp` entry `privacy_dp` saves in checkpoint/state.json
    (the accountant's own figure for the saved weights, not the last metrics row)."""
    train = record.get("train_config") or {}
    state = _read_json(run / "checkpoint" / "state.json") or {}
    dp = state.get("dp")
    if not isinstance(dp, dict):
        if train.get("dp"):
            return '<span class="flag">trained with --dp, but checkpoint/state.json has no ' \
                "dp entry: no guarantee can be shown</span>"
        return '<span class="none">not private (trained without --dp)</span>'
    eps, delta = dp.get("epsilon_spent"), dp.get("delta")
    rows = [["epsilon spent", f'<b>{_num(eps, 4)}</b>'], ["delta", _num(delta, 3)],
            ["noise multiplier", _num(dp.get("noise_multiplier"), 4)],
            ["accountant", _e(dp.get("accountant", "–"))],
            ["clip norm", _num(dp.get("clip_norm"), 4)],
            ["sample rate", _num(dp.get("sample_rate"), 4)],
            ["steps accounted", _num(dp.get("steps"))]]
    target = train.get("dp_epsilon")
    if isinstance(target, int | float) and target > 0:
        rows.insert(1, ["epsilon target", _num(target, 4)])
    what = _what_is_private(record.get("model"))
    return (_table(None, rows) + f'<div class="muted">the checkpoint\'s weights and samples are '
            f"({_num(eps, 3)}, {_num(delta, 3)})-DP with respect to the training data ({what}); "
            "not covered: the loss curves and metrics.jsonl (computed on the private data "
            "without noise)</div>")


def _what_is_private(model: Any) -> str:
    """What the guarantee covers for the run's family (genlab.privacy_dp.WHAT_IS_PRIVATE)."""
    from genlab.models import MODELS
    from genlab.privacy_dp import WHAT_IS_PRIVATE, private_family

    family = private_family(MODELS[model]) if model in MODELS else None
    return WHAT_IS_PRIVATE.get(family or "vae")


def _provenance(prov: Any) -> str:
    if not isinstance(prov, dict):
        return ""
    keep = ("genlab", "step", "checkpoint_sha256", "seed", "train_seed", "which", "command")
    bits = [f"{k} {_e(str(prov[k])[:16] if k.endswith('sha256') else prov[k])}"
            for k in keep if prov.get(k) is not None]
    return f'<div class="muted">{"; ".join(bits)}</div>' if bits else ""


def _header(run: Path, record: dict[str, Any]) -> str:
    from genlab.rundir import read_metrics

    manifest = run / "checkpoint" / "manifest.json"
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()[:16] if manifest.is_file() else "–"
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if "step" in r]
    versions = record.get("environment") or {}
    rows = [["model", _e(record.get("model"))], ["data", _e(record.get("data"))],
            ["steps", _e(max(steps) if steps else "–")],
            ["seed", _e((record.get("train_config") or {}).get("seed"))],
            ["checkpoint", f"<code>{_e(digest)}</code> <span class='muted'>(sha256 of "
                           "manifest)</span>"],
            ["genlab", _e(versions.get("genlab", "–") if isinstance(versions, dict) else "–")],
            ["created", _e(record.get("created", "–"))]]
    command = record.get("command")
    return _table(None, rows) + (f'<div class="muted"><code>{_e(command)}</code></div>'
                                 if command else "")


# --- the page -------------------------------------------------------------------------------------

def build_report(runs: Sequence[str | Path]) -> str:
    """The HTML of the report card of `runs` (run folders), in the order given."""
    from genlab.rundir import read_metrics, read_run

    if not runs:
        raise UserError("give at least one run folder")
    columns = []
    for run in map(Path, runs):
        record = read_run(run)
        eval_report = _read_json(run / "eval.json")
        loss = loss_png(read_metrics(run / "metrics.jsonl"))
        columns.append({
            "name": run.name,
            "run": _header(run, record),
            "privacy": _privacy(run, record),
            "samples": _samples(run),
            "loss curves": _img(loss, "loss curves") if loss else NONE,
            "evaluation": _eval(eval_report),
            "likelihood": _likelihood(eval_report),
            "utility": _utility(_read_json(run / "utility.json")),
            "audit": _audit(run, _read_json(run / "audit.json")),
        })
    head = "".join(f"<th>{_e(c['name'])}</th>" for c in columns)
    rows = []
    for section in ("run", "privacy", "samples", "loss curves", "evaluation", "likelihood",
                    "utility", "audit"):
        cells = "".join(f"<td>{c[section]}</td>" for c in columns)
        rows.append(f"<tr><th>{_e(section)}</th>{cells}</tr>")
    title = "genlab report: " + ", ".join(c["name"] for c in columns)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{_e(title)}</h1><p class=\"sub\">{len(columns)} run(s) side by side; every "
            "figure from the files in each run folder (eval.json, audit.json, utility.json, "
            f"metrics.jsonl); made by genlab {_e(__version__)}. Numbers in brackets are 95% "
            "intervals.</p>"
            # equal columns, none narrower than a sample grid: wide pages scroll sideways
            f'<table class="card" style="min-width:{110 + 540 * len(columns)}px">'
            f'<col class="key">{"<col>" * len(columns)}<thead><tr><th></th>{head}</tr></thead><tbody>'
            f"{''.join(rows)}</tbody></table></body></html>\n")


def write_report(runs: Sequence[str | Path], out: str | Path) -> Path:
    """Write the report card atomically; returns its path."""
    out = Path(out)
    page = build_report(runs)
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: the folder {out.parent} does not exist")
    atomic_write_text(out, page)
    return out
