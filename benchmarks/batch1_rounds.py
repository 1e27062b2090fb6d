"""Images one at a time through another checkout's cascade, a round per line read from stdin: the
baseline that `dataset_rate.py --baseline REV` times in turn with this tree's batches.

    python benchmarks/batch1_rounds.py TREE IMAGES.npz MODELS THREADS

TREE is the root of a checkout (its `cdcore` is imported, not this tree's); IMAGES.npz holds
`contents` (N, H, W, 3) and `style` (h, w, 3) uint8; MODELS a model folder. After a warm-up the
child prints "ready"; then each line it reads runs one round over the N contents and answers
"<wall s> <CPU s>". It uses only the cascade API every checkout has had since the layout of
issue 27: load_model_set, style_statistics, stylize, to_tensor, to_uint8.
"""
import sys
import time

import numpy as np


def main() -> int:
    tree, images, models_dir, threads = sys.argv[1:5]
    sys.path.insert(0, tree)
    import torch
    from cdcore.models.modelset import load_model_set
    from cdcore.transfer import stylize as cascade

    torch.set_num_threads(int(threads))
    models = load_model_set(models_dir)
    models.to("cpu", channels_last=True)
    data = np.load(images)
    rgbs = list(data["contents"])
    style = cascade.style_statistics(models, cascade.to_tensor(data["style"]), "wct")

    def one_round() -> None:
        for rgb in rgbs:
            cascade.to_uint8(cascade.stylize(models, cascade.to_tensor(rgb), style))

    one_round()
    print("ready", flush=True)
    for _ in sys.stdin:
        wall, cpu = time.perf_counter(), time.process_time()
        one_round()
        print(f"{time.perf_counter() - wall} {time.process_time() - cpu}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
