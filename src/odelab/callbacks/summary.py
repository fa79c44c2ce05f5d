"""Lightning's model summary, without the FLOPs it did not measure."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import RichModelSummary
from lightning.pytorch.utilities.model_summary.model_summary import (
    get_formatted_model_size,
    get_human_readable_count,
)


class ModelSummary(RichModelSummary):
    """The rich layer table and totals at fit start. Lightning counts FLOPs only for a module
    with an ``example_input_array`` (else its FLOPs column and ``Total FLOPs`` read 0): without
    a count both are left out."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        if total_flops:
            return RichModelSummary.summarize(
                summary_data, total_parameters, trainable_parameters, model_size,
                total_training_modes, total_flops=total_flops, **summarize_kwargs,
            )  # fmt: skip
        from rich import get_console
        from rich.table import Table

        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for name, _ in columns:
            left = name in ("Name", "Type", "Mode")
            table.add_column(
                name, justify="left" if left else "right", style="dim" * (name == " ")
            )
        for row in zip(*(values for _, values in columns)):
            table.add_row(*row)
        get_console().print(table)

        def n(x: int) -> str:
            return get_human_readable_count(int(x)).strip()

        get_console().print(
            f"Params: {n(trainable_parameters)} trainable, "
            f"{n(total_parameters - trainable_parameters)} non-trainable "
            f"({get_formatted_model_size(model_size)} MB); modules: "
            f"{total_training_modes['train']} train, {total_training_modes['eval']} eval"
        )
