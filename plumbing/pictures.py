"""
Pictures in and out: image files read as the data loader reads them, image grids (PNG), videos (GIF), annotated
tables, and the analysis commands' figures (matplotlib, optional). Each is written to a temporary name and renamed,
so none is ever left half-written.
"""
import io
import os

import numpy as np


def to_rgb(image, size):
    """Any image (a pillow image or an array; grayscale, RGBA, palette, CMYK, any size) -> uint8 [size, size, 3]:
    transparency over white, the shorter side resized to `size` (bilinear: as good when shrinking, and faster in
    the data loader, which uses this too), the centre cropped square."""
    from PIL import Image
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image).squeeze())
    if "A" in img.getbands() or "transparency" in img.info:
        img = Image.alpha_composite(Image.new("RGBA", img.size, "white"), img.convert("RGBA"))
    img = img.convert("RGB")
    scale = size / min(img.size)
    img = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))), Image.BILINEAR)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def load_image(source, size):
    """An image file's bytes, or its path -> RGB uint8 [size, size, 3] (to_rgb: any mode, the short side
    resized, the centre cropped): the data loader and the sampler read images alike. JPEGs much larger than `size`
    are decoded at a reduced scale, which is much faster."""
    from PIL import Image
    im = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    im.draft("RGB", (size, size))
    return to_rgb(im, size)


def upscale(images, scale):
    """uint8 [..., H, W, 3] -> nearest-neighbour enlarged, so small images stay crisp."""
    return np.asarray(images).repeat(scale, axis=-3).repeat(scale, axis=-2)


def save_grid(images, path, ncol=8, scale=4):
    """uint8 [B, H, W, 3] -> one PNG, a white line between images."""
    from PIL import Image
    images = upscale(images, scale)
    B, H, W, _ = images.shape
    grid = np.full((-(-B // ncol) * (H + 2 * scale), min(B, ncol) * (W + 2 * scale), 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, ncol)
        y, x = r * (H + 2 * scale) + scale, c * (W + 2 * scale) + scale
        grid[y:y + H, x:x + W] = im
    tmp = path + ".tmp"
    Image.fromarray(grid).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def save_gif(frames, path, scale=4, ms_per_frame=400):
    """uint8 [T, H, W, 3] -> an animated GIF that loops."""
    from PIL import Image
    images = [Image.fromarray(f) for f in upscale(frames, scale)]
    tmp = path + ".tmp"
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=ms_per_frame, loop=0)
    os.replace(tmp, path)
    return path


def save_annotated(rows, path, scale=4, text_width=300):
    """A PNG table, one row per list of cells: images (uint8 [h, w, 3], enlarged `scale` times) or text (wrapped to
    text_width pixels, in pillow's built-in font: nothing to download)."""
    import textwrap
    from PIL import Image, ImageDraw, ImageFont
    try:
        font = ImageFont.load_default(size=13)   # a scalable font (pillow >= 10.1 with FreeType)
    except (TypeError, ImportError, OSError):
        font = ImageFont.load_default()
    pad = 2 * scale
    n_cols = max(map(len, rows))
    is_image = lambda cell: isinstance(cell, np.ndarray)
    widths = [max(r[i].shape[1] * scale if is_image(r[i]) else text_width for r in rows if i < len(r))
              for i in range(n_cols)]
    wrap = max(8, int(text_width / font.getlength("x")))
    line = font.getbbox("Ay")[3] + 3
    cells = [[upscale(c, scale) if is_image(c) else textwrap.wrap(c, wrap) for c in r] for r in rows]   # str: lines
    heights = [max(c.shape[0] if is_image(c) else len(c) * line for c in r) for r in cells]
    sheet = Image.new("RGB", (sum(widths) + pad * (n_cols + 1), sum(heights) + pad * (len(rows) + 1)), "white")
    draw, y = ImageDraw.Draw(sheet), pad
    for r, h in zip(cells, heights):
        x = pad
        for cell, w in zip(r, widths):
            if is_image(cell):
                sheet.paste(Image.fromarray(np.ascontiguousarray(cell)), (x, y))
            else:
                for k, text in enumerate(cell):
                    draw.text((x, y + k * line), text, fill="black", font=font)
            x += w + pad
        y += h + pad
    tmp = path + ".tmp"
    sheet.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def save_rollout(rows, folder):
    """Frames [2 A, T, h, w, 3], each imagined row above its true one -> rollout.gif (the A pairs side by side, in
    time) and rollout.png (every frame); returns both paths."""
    A, T, h, w = len(rows) // 2, *rows.shape[1:4]
    framed = np.pad(rows, ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)), constant_values=255)
    movie = framed.reshape(A, 2, T, h + 2, w + 2, 3).transpose(2, 1, 3, 0, 4, 5).reshape(T, 2 * h + 4, A * w + 2 * A, 3)
    return [save_gif(movie, os.path.join(folder, "rollout.gif"), ms_per_frame=500),
            save_grid(rows.reshape(-1, h, w, 3), os.path.join(folder, "rollout.png"), ncol=T)]


def pyplot():
    """matplotlib.pyplot, or None with a note: plots are optional, every table is printed without them."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): figures skipped")
        return None


def save_figure(fig, path):
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path + ".tmp.png")
    os.replace(path + ".tmp.png", path)
    plt.close(fig)
    return path


def routing_figure(rows, stats, path):
    """routing.py's figure: experts by specialization per layer, the last layer's selection rates by timestep bin,
    and the generation/understanding correlation per layer."""
    plt = pyplot()
    if plt is None:
        return []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    layers = [r["layer"] for r in rows]
    bottom = np.zeros(len(rows))
    for name, colour in (("text", "tab:blue"), ("multimodal", "tab:gray"), ("vision", "tab:orange")):
        values = np.array([r[name] for r in rows])
        axes[0].bar(layers, values, bottom=bottom, label=name, color=colour)
        bottom += values
    axes[0].set(title="experts by specialization (Fig. 18)", xlabel="layer", ylabel="experts")
    axes[0].legend()
    rates = stats[-1]["tbins"] / np.maximum(stats[-1]["n_tbins"][:, None], 1)
    im = axes[1].imshow(rates.T, aspect="auto", cmap="viridis")
    axes[1].set(title="last layer: selection rate by timestep bin", xlabel="t bin (0 noise .. 9 clean)",
                ylabel="expert")
    fig.colorbar(im, ax=axes[1])
    axes[2].plot(layers, [r["gen_und_r"] for r in rows], "o-")
    axes[2].set(title="generation vs understanding selection, Pearson r", xlabel="layer", ylim=(-1, 1))
    return [save_figure(fig, path)]
