"""Where a paid image goes: its recipe embedded, saved durably, and only then journaled as done.
An image the disk refuses is a lost paid image: on the books, the item left pending, the run
stopped. And at the start of a run, an image saved just before a crash is adopted.
"""

from __future__ import annotations

from batch_runner.api import spec as api_spec
from batch_runner.api.client import Generated, TransientError, check_image
from batch_runner.engine.attempts import output_problem
from batch_runner.engine.context import RunContext
from batch_runner.engine.outcome import StopReason
from batch_runner.job.items import Item
from batch_runner.store import recipe
from batch_runner.store.journal import Journal
from batch_runner.store.ledger import Ledger
from batch_runner.store.output_dir import OutputDir


class ResultSink:
    def __init__(self, ctx: RunContext):
        self.ctx = ctx

    def succeed(self, item: Item, generated: Generated, attempt: int, latency: float) -> None:
        """The image carries its own recipe, and is durable on disk before the journal calls
        the item done."""
        ctx = self.ctx
        card = recipe.make(item.item_id, item.params, item.meta, ctx.job.name, generated.seed_value)
        image = recipe.embed(generated.image, generated.extension, card)
        try:
            image_path = ctx.out.save_image(item.item_id, image, generated.extension)
        except OSError as exc:
            self._lose_paid_image(item, generated, attempt, exc)
            return
        ctx.journal.done(
            item.item_id,
            "succeeded",
            n=attempt,
            http_status=200,
            error=None,
            cost=generated.cost,
            latency=round(latency, 4),
            image_path=image_path,
            seed_value=generated.seed_value,
            request_id=generated.request_id,
            remaining_credits=generated.remaining_credits,
        )
        ctx.tally.add(succeeded=1)

    def _lose_paid_image(self, item: Item, generated: Generated, attempt: int, exc: OSError) -> None:
        """The image was paid for and received, but the disk refused it. Put the charge on the
        books if the journal still takes a line (else its `sent` line keeps it possibly
        billed), leave the item pending, and stop: every later image would be lost too."""
        self.ctx.tally.add(lost_images=1)
        try:
            self.ctx.journal.attempt(
                item.item_id, attempt, 200, f"received but not saved: {exc.strerror}", generated.cost, True, 0.0
            )
        except OSError:
            pass
        self.output_error(exc)

    def output_error(self, exc: OSError) -> None:
        """The output folder refused a write: stop, saying why."""
        self.ctx.stop.stop(StopReason.OUTPUT, output_problem(exc))


def adopt_saved_images(out: OutputDir, history: Ledger, journal: Journal, price: float) -> int:
    """An image saved just before a crash, but not yet journaled as done, was paid for and
    received: keep it rather than buy it again. Returns how many were adopted."""
    adopted = 0
    for item_id, state in history.where_status("sent", "pending"):
        path = out.find_image(item_id)
        if path is None or not state.row:
            continue
        try:
            check_image(path.read_bytes(), api_spec.resolution_size(state.row.get("resolution")))
        except TransientError:
            path.unlink(missing_ok=True)
            continue
        journal.done(
            item_id,
            "succeeded",
            n=state.attempts,
            http_status=200,
            cost=price,
            image_path=path.relative_to(out.path).as_posix(),
            recovered=True,
        )
        adopted += 1
    return adopted
