"""`python benchmarks/plain_trainer.py --model DIR --data DIR [...]`: fine-tuning the way users do it today.

The baseline the benchmarks compare hf_tl with, written as transformers'
`examples/pytorch/image-classification/run_image_classification.py` does it: `load_dataset`,
`AutoConfig` with the dataset's labels, `AutoModelForImageClassification.from_pretrained(...,
ignore_mismatched_sizes=True)`, per-image torchvision transforms applied in `with_transform` (train:
RandomResizedCrop, RandomHorizontalFlip, ToTensor, Normalize; validation: Resize, CenterCrop,
ToTensor, Normalize), a stacking collator, and `Trainer` with the example README's arguments
(evaluate and save every epoch, keep the best model, `remove_unused_columns=False`), then
`save_model`, `save_state`, a final `evaluate()` and `create_model_card()`. Two departures, both
neutral for speed: accuracy is a numpy mean (`evaluate.load("accuracy")` needs the Hub), and
`--strategy last_block` freezes by hand what a user would (every parameter, then the last
encoder layer, the final norm and the classifier heads train again). A model whose forward
takes no labels (DeiT with teacher) gets the loss a user must add: cross-entropy on each head; and
a processor that resizes, then centre-crops (DeiT: 256, then 224) has its images cropped to the crop
size, the model's input size, where the example crops to the resize size, which DeiT refuses.

Writes OUTPUT/timings.json: its own phases in seconds (load, training, evaluation, save) and the
eval accuracy.
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
from pathlib import Path

import numpy as np
import torch
from datasets import load_dataset
from torchvision.transforms import (
    CenterCrop,
    Compose,
    Normalize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    ToTensor,
)
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--eval-split", default="test")
    parser.add_argument("--strategy", choices=("full", "last_block"), default="full")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--workers", type=int, default=0, help="dataloader_num_workers (the example's default: 0)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--no-pretrained", action="store_true", help="random weights from the config (no weights)")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    phases: dict[str, float] = {}
    started = time.perf_counter()

    dataset = load_dataset(args.data)
    image_column, label_column = "img", "label"
    labels = dataset[args.train_split].features[label_column].names
    label2id = {label: str(i) for i, label in enumerate(labels)}
    id2label = {str(i): label for i, label in enumerate(labels)}

    def compute_metrics(p):
        logits = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions  # DeiT with teacher: a tuple
        return {"accuracy": float(np.mean(np.argmax(logits, axis=1) == p.label_ids))}

    config = AutoConfig.from_pretrained(
        args.model,
        num_labels=len(labels),
        label2id=label2id,
        id2label=id2label,
        finetuning_task="image-classification",
    )
    if args.no_pretrained:
        model = AutoModelForImageClassification.from_config(config)
    else:
        model = AutoModelForImageClassification.from_pretrained(args.model, config=config, ignore_mismatched_sizes=True)
    if args.strategy == "last_block":
        freeze_all_but_last_block(model)
    image_processor = AutoImageProcessor.from_pretrained(args.model)
    if "shortest_edge" in image_processor.size:
        size = image_processor.size["shortest_edge"]
    else:
        size = (image_processor.size["height"], image_processor.size["width"])
    # The example crops to `size`; for a processor that resizes, then centre-crops (DeiT: 256, then 224) that is
    # not the model's input size, which DeiT refuses. A user crops to the crop size, as here.
    crop = size
    if getattr(image_processor, "do_center_crop", False) and getattr(image_processor, "crop_size", None):
        crop = (image_processor.crop_size["height"], image_processor.crop_size["width"])
    normalize = Normalize(mean=image_processor.image_mean, std=image_processor.image_std)
    _train_transforms = Compose([RandomResizedCrop(crop), RandomHorizontalFlip(), ToTensor(), normalize])
    _val_transforms = Compose([Resize(size), CenterCrop(crop), ToTensor(), normalize])

    def train_transforms(example_batch):
        example_batch["pixel_values"] = [_train_transforms(img.convert("RGB")) for img in example_batch[image_column]]
        return example_batch

    def val_transforms(example_batch):
        example_batch["pixel_values"] = [_val_transforms(img.convert("RGB")) for img in example_batch[image_column]]
        return example_batch

    train_dataset = dataset[args.train_split].with_transform(train_transforms)
    eval_dataset = dataset[args.eval_split].with_transform(val_transforms)

    def collate_fn(examples):
        pixel_values = torch.stack([example["pixel_values"] for example in examples])
        labels = torch.tensor([example[label_column] for example in examples])
        return {"pixel_values": pixel_values, "labels": labels}

    training_args = TrainingArguments(
        output_dir=args.output,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        learning_rate=args.lr,
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
        save_total_limit=3,
        logging_steps=10,
        remove_unused_columns=False,
        label_names=["labels"],
        bf16=args.bf16,
        dataloader_num_workers=args.workers,
        seed=args.seed,
        report_to="none",
    )
    clock = EpochClock()  # measurement only: the example has no such callback
    trainer = Trainer(
        callbacks=[clock],
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        compute_metrics=compute_metrics,
        processing_class=image_processor,
        data_collator=collate_fn,
        compute_loss_func=None if "labels" in inspect.signature(model.forward).parameters else both_heads_loss,
    )
    phases["load"] = time.perf_counter() - started

    started = time.perf_counter()
    train_result = trainer.train()
    phases["training"] = time.perf_counter() - started

    started = time.perf_counter()
    trainer.save_model()
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()
    phases["save"] = time.perf_counter() - started

    started = time.perf_counter()
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    phases["eval_metrics"] = time.perf_counter() - started

    started = time.perf_counter()
    trainer.create_model_card(finetuned_from=args.model, tasks="image-classification")
    phases["card"] = time.perf_counter() - started

    timings = {
        "phases": {name: round(seconds, 3) for name, seconds in phases.items()},
        "eval_accuracy": metrics["eval_accuracy"],
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "train_seconds_per_epoch": [round(s, 3) for s in clock.seconds],
        "train_images": len(train_dataset),
    }
    (Path(args.output) / "timings.json").write_text(json.dumps(timings, indent=1))


def both_heads_loss(outputs, labels, num_items_in_batch=None):
    """DeiT with teacher takes no labels: a user adds a loss, cross-entropy on each head, as hf_tl trains it."""
    heads = [outputs.cls_logits, outputs.distillation_logits]
    return sum(torch.nn.functional.cross_entropy(logits.float(), labels) for logits in heads)


def freeze_all_but_last_block(model: torch.nn.Module) -> None:
    """What a user writes for a ViT-like model: freeze all, then train the last layer, final norm and heads."""
    last = f".layers.{model.config.num_hidden_layers - 1}."
    for name, parameter in model.named_parameters():
        parameter.requires_grad = last in name or ".layernorm." in name or "classifier" in name


class EpochClock(TrainerCallback):
    """Seconds of each epoch's training steps, evaluation excluded (as hf_tl's EpochTimer counts them)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self._start)


if __name__ == "__main__":
    main()
