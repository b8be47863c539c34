"""
Hand-written SVG plots (no plotting library): a heatmap with a colour scale, and line charts with error bars.
Both return the SVG text; every label is plain text in the file, so the plots are searchable and diffable.
"""
from xml.sax.saxutils import escape

FONT = 'font-family="Helvetica, Arial, sans-serif"'
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def diverging(value, low=-1.0, high=1.0):
    """-1 blue, 0 white, 1 red (linear in between)."""
    t = max(-1.0, min(1.0, (2 * (value - low) / (high - low)) - 1))
    blue, white, red = (49, 99, 178), (255, 255, 255), (200, 40, 40)
    end = red if t > 0 else blue
    mix = [round(w + abs(t) * (e - w)) for w, e in zip(white, end)]
    return "#{:02x}{:02x}{:02x}".format(*mix)


def heatmap(matrix, rows, columns, title, low=-1.0, high=1.0, cell=44):
    """matrix[i][j] (None: no value) -> SVG with labels on both axes, values in the cells and a colour bar."""
    left = 12 + 7 * max(len(r) for r in rows)
    top = 40 + 7 * max(len(c) for c in columns)
    width = max(left + cell * len(columns) + 90, 7 * len(title) + 40)
    height = top + cell * len(rows) + 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" {FONT} font-size="12">',
           f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">{escape(title)}</text>']
    for j, name in enumerate(columns):
        x = left + cell * j + cell / 2
        out.append(f'<text transform="translate({x},{top - 6}) rotate(-60)">{escape(name)}</text>')
    for i, name in enumerate(rows):
        y = top + cell * i + cell / 2 + 4
        out.append(f'<text x="{left - 6}" y="{y}" text-anchor="end">{escape(name)}</text>')
        for j, value in enumerate(matrix[i]):
            x = left + cell * j
            fill = "#eeeeee" if value is None else diverging(value, low, high)
            out.append(f'<rect x="{x}" y="{top + cell * i}" width="{cell}" height="{cell}" fill="{fill}" '
                       f'stroke="white"/>')
            if value is not None:
                out.append(f'<text x="{x + cell / 2}" y="{y}" text-anchor="middle" font-size="11">{value:.2f}</text>')
    bar_x = left + cell * len(columns) + 20
    for k in range(20):  # the colour scale, high at the top
        value = high - (high - low) * k / 19
        out.append(f'<rect x="{bar_x}" y="{top + k * cell * len(rows) / 20}" width="14" '
                   f'height="{cell * len(rows) / 20 + 0.5}" fill="{diverging(value, low, high)}"/>')
    out.append(f'<text x="{bar_x + 18}" y="{top + 10}">{high:g}</text>')
    out.append(f'<text x="{bar_x + 18}" y="{top + cell * len(rows)}">{low:g}</text>')
    out.append("</svg>")
    return "\n".join(out)


def line_chart(series, x_values, title, x_label, y_label, size=(560, 340)):
    """series: {name: [(mean, std) or None per x]} -> SVG; x positions are evenly spaced (shots are not linear)."""
    width, height = size
    left, right, top, bottom = 56, 150, 34, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [m for points in series.values() for p in points if p for m in (p[0] - p[1], p[0] + p[1])]
    low, high = (min(values + [0.0]), max(values + [1.0])) if values else (0.0, 1.0)
    x_of = lambda k: left + plot_w * (k / max(1, len(x_values) - 1))
    y_of = lambda v: top + plot_h * (1 - (v - low) / ((high - low) or 1))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" {FONT} font-size="12">',
           f'<text x="{left + plot_w / 2}" y="18" text-anchor="middle" font-size="14">{escape(title)}</text>',
           f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="black"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="black"/>',
           f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">{escape(x_label)}</text>',
           f'<text transform="translate(14,{top + plot_h / 2}) rotate(-90)" text-anchor="middle">'
           f'{escape(y_label)}</text>']
    for k, x in enumerate(x_values):
        out.append(f'<text x="{x_of(k)}" y="{top + plot_h + 16}" text-anchor="middle">{escape(str(x))}</text>')
    for t in range(5):
        v = low + (high - low) * t / 4
        out.append(f'<text x="{left - 6}" y="{y_of(v) + 4}" text-anchor="end">{v:.1f}</text>')
        out.append(f'<line x1="{left}" y1="{y_of(v)}" x2="{left + plot_w}" y2="{y_of(v)}" stroke="#dddddd"/>')
    for s, (name, points) in enumerate(series.items()):
        colour = PALETTE[s % len(PALETTE)]
        xy = [(x_of(k), y_of(p[0]), p) for k, p in enumerate(points) if p]
        if xy:
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
                       + " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in xy) + '"/>')
        for x, y, (mean, std) in xy:
            out.append(f'<line x1="{x}" y1="{y_of(mean - std)}" x2="{x}" y2="{y_of(mean + std)}" stroke="{colour}"/>')
            out.append(f'<circle cx="{x}" cy="{y}" r="3" fill="{colour}"/>')
        legend_y = top + 16 * s + 8
        out.append(f'<rect x="{left + plot_w + 12}" y="{legend_y - 8}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{left + plot_w + 26}" y="{legend_y + 1}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)
