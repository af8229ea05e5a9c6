"""Metrics as terminal text: keys that share their leaf names become one small table, the rest `name value` pairs.

`fewshot`'s `test_acc.<method>.<shots>` reads as a method x shots table, `czsl`'s `<row>.<world>.<metric>` as one
row x metric table per world, and a lone group (the gap numbers) as wrapped pairs. Every line fits `width`: a table
wider than that continues in blocks of columns, each block with its own header.
"""

from __future__ import annotations

from collections.abc import Sequence

INDENT = "  "


def _split(key: str) -> tuple[str, str]:
    parent, _, leaf = key.rpartition(".")
    return parent, leaf


def _common(parts: Sequence[list[str]], reverse: bool = False) -> list[str]:
    """The dotted components every key shares at its start (or, with `reverse`, at its end)."""
    seqs = [p[::-1] if reverse else p for p in parts]
    out: list[str] = []
    for column in zip(*seqs, strict=False):
        if len(set(column)) != 1:
            break
        out.append(column[0])
    return out[::-1] if reverse else out


def _table(title: str, labels: list[str], headers: list[str], cells: list[list[str]], width: int) -> list[str]:
    """`title` and the header, then one line per label; columns split into blocks when the line would not fit."""
    label_w = max(len(title), *(len(INDENT + lab) for lab in labels))
    col_w = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
    blocks: list[list[int]] = [[]]
    used = label_w
    for i, w in enumerate(col_w):
        if blocks[-1] and used + 2 + w > width:
            blocks.append([])
            used = label_w
        blocks[-1].append(i)
        used += 2 + w
    lines: list[str] = []
    for block in blocks:
        head = f"{title:<{label_w}}" + "".join(f"  {headers[i]:>{col_w[i]}}" for i in block)
        lines.append(head.rstrip())
        for lab, row in zip(labels, cells, strict=True):
            lines.append(f"{INDENT + lab:<{label_w}}" + "".join(f"  {row[i]:>{col_w[i]}}" for i in block))
    return lines


def _pairs(title: str, items: list[tuple[str, str]], width: int) -> list[str]:
    """`title  name value  name value ...`, wrapped under the first pair."""
    lines, line = [], title
    for name, value in items:
        cell = f"{name} {value}"
        if line.strip() and len(line) + 2 + len(cell) > width and line != title:
            lines.append(line)
            line = " " * (len(title) + 2 - 2)
        line = f"{line}  {cell}"
    lines.append(line)
    return lines


def grid_lines(name: str, rows: Sequence[tuple[str, str]], width: int = 120) -> list[str]:
    """Text lines for one metrics file `name` with (dotted key, formatted value) `rows`, in their order."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for key, value in rows:
        parent, leaf = _split(key)
        groups.setdefault(parent, []).append((leaf, value))
    by_leaves: dict[tuple[str, ...], list[str]] = {}
    for parent, items in groups.items():
        by_leaves.setdefault(tuple(leaf for leaf, _ in items), []).append(parent)
    lines: list[str] = []
    for leaves, parents in by_leaves.items():
        if len(parents) == 1:
            parent = parents[0]
            lines += _pairs(f"{name} {parent}".rstrip(), groups[parent], width)
            continue
        parts = [p.split(".") for p in parents]
        head = _common(parts)
        tail = _common([p[len(head):] for p in parts], reverse=True)
        labels = [".".join(p[len(head): len(p) - len(tail)]) or "-" for p in parts]
        title = " ".join(filter(None, (name, ".".join(head), f"({'.'.join(tail)})" if tail else "")))
        cells = [[value for _, value in groups[parent]] for parent in parents]
        lines += _table(title, labels, list(leaves), cells, width)
    return lines
