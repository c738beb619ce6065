"""
Pictures in and out: image files read as the data loader reads them, image grids (PNG) and videos (GIF) written,
and matplotlib for the figures of the analysis commands. Files are written to a temporary name and renamed, so no
half-written file is ever left behind.
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
