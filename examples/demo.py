"""`make run`: the embedded default, end to end on one machine.

Starts a local S3 server (SeaweedFS on loopback, data in .s3data/), uploads the WordNet
sample pairs, runs the finetune pipeline with kfp.local on minilm-l6-en, and prints the
metrics before and after fine-tuning and where the exported model is.

`make cluster-run` passes --image and --gpu-image: the pipeline is then compiled against
those step images and every step runs in its container, as on a cluster.
"""

import argparse
import os
import sys
import time
from pathlib import Path

from finetuner.cli import internal_error, print_metrics
from finetuner.errors import FinetunerError, redact
from finetuner.io import s3server, storage, tables
from finetuner.launch.local import run_pipeline

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "finetuner"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", help="run every step in this image (the CPU steps)")
    parser.add_argument("--gpu-image", help="the train step's image (default: --image)")
    args = parser.parse_args()
    images = (args.image, args.gpu_image or args.image) if args.image else None
    console = tables.console()
    console.print("[bold]Starting the local S3 server (SeaweedFS, 127.0.0.1)[/bold]")
    server = s3server.start(ROOT / ".s3data")
    try:
        os.environ.update(server.env())
        server.create_bucket(BUCKET)
        train_data = f"s3://{BUCKET}/data/wordnet_pairs.csv"
        storage.upload_file(ROOT / "examples" / "wordnet_pairs.csv", train_data)
        output = f"s3://{BUCKET}/runs/minilm-l6-en-{time.strftime('%Y%m%d-%H%M%S')}/"
        console.print(f"S3 endpoint {server.endpoint}; training data {train_data}")
        where = f", each step in its image ({', '.join(images)})" if images else ""
        console.print(f"[bold]Running the finetune pipeline with kfp.local{where}[/bold]")
        run = run_pipeline(
            {
                "model": "minilm-l6-en",
                "train_data": train_data,
                "val_split": 0.2,
                "epochs": 2,
                "batch_size": 32,
                "learning_rate": 5e-5,
                "max_length": 64,
                "output_uri": output,
            },
            images=images,
        )
    except FinetunerError as exc:
        print(f"error: {redact(exc)}", file=sys.stderr)
        return exc.exit_status
    except Exception as exc:
        print(f"error: {redact(internal_error(exc))}", file=sys.stderr)
        return 1
    finally:
        server.stop()
    print_metrics(run.metrics(), console)
    console.print("[bold]Exported model[/bold]")
    for name, uri in run.summary["artifacts"].items():
        console.print(f"{name:>9}: {uri}")
    console.print("The S3 data stays in .s3data; `make s3` serves it again.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
