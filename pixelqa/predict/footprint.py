"""How much memory a predict run's frames and masks take, checked before the frames are read.

Measured on the tiny model (`python -m pixelqa.bench footprint`: the difference of predict's peak resident memory
between 150 and 300 frames, of 640x360 and of 1280x720, with one and two prompts): 8.1-8.5 bytes a pixel of every
frame read with one object, and 3.7-5.4 more for a second, above what the model takes (the 640x360 figures carry about
1.5 bytes a pixel of noise: tens of megabytes of the allocator's slack over 35 M pixels). What they are: the decoded
frames (3), Pillow's palette copy of each GIF frame (about 1), and per object its boolean masks four times (SAM's
output, the memory bank's copy and the Prediction's `masks` and `memory`). The constants round up. A one-minute 1080p
phone video (1800 frames) with one prompt needs about 37 GB (56 GB before frames were read into one tensor, masks
thresholded a chunk at a time and overlays written frame by frame): without this check the process is killed by the
system after minutes of decoding, with no message.
"""

from __future__ import annotations

from pathlib import Path

from pixelqa.predict.errors import PredictInputError

BYTES_PER_PIXEL = 5  # per frame read
BYTES_PER_PIXEL_PER_OBJECT = 5  # per frame read and object segmented
HEADROOM = 0.8  # the share of the available memory a suggested --max-frames may plan to fill
GIB = 2**30


def frames_bytes(num_frames: int, size: tuple[int, int], objects: int) -> int:
    """Bytes the frames and masks of a run take: `num_frames` frames of `size` (H, W), `objects` objects (>= 1)."""
    per_pixel = BYTES_PER_PIXEL + BYTES_PER_PIXEL_PER_OBJECT * max(objects, 1)
    return num_frames * size[0] * size[1] * per_pixel


def available_bytes(meminfo: str = "/proc/meminfo") -> int | None:
    """The memory the system can give this process now (Linux MemAvailable, less a cgroup limit when lower); None
    where neither can be read (other systems: no check)."""
    found = [n for n in (meminfo_available(meminfo), cgroup_available()) if n is not None]
    return min(found) if found else None


def meminfo_available(meminfo: str = "/proc/meminfo") -> int | None:
    """MemAvailable of a /proc/meminfo file, in bytes; None when it cannot be read."""
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cgroup_available(root: str = "/sys/fs/cgroup") -> int | None:
    """What this process's cgroup memory limit leaves (v2, else v1), in bytes; None without a limit."""
    for limit_file, usage_file in (
        ("memory.max", "memory.current"),  # cgroup v2
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),  # v1
    ):
        try:
            limit = Path(root, limit_file).read_text().strip()
            usage = int(Path(root, usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # "max" or v1's huge value: no limit
            return max(int(limit) - usage, 0)
        return None
    return None


def check_footprint(num_frames: int, size: tuple[int, int], objects: int, available: int | None) -> None:
    """PredictInputError naming --max-frames when reading `num_frames` frames would take more memory than
    `available` (None: unknown, no check), with the number of frames that fits."""
    need = frames_bytes(num_frames, size, objects)
    if available is None or need <= available:
        return
    fits = max(int(available * HEADROOM) // max(frames_bytes(1, size, objects), 1), 0)
    advice = f"pass --max-frames {fits} or fewer" if fits >= 1 else "free memory or use a smaller video"
    raise PredictInputError(
        f"--max-frames: reading {num_frames} frames of {size[1]}x{size[0]} with {max(objects, 1)} object(s) to "
        f"segment needs about {need / GIB:.1f} GiB for frames and masks (besides the model), and {available / GIB:.1f}"
        f" GiB is available; {advice} (or --no-memory-check to try anyway)"
    )
