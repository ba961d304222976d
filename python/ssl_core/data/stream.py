"""What every batch stream shares: an endless iterator over (epoch, batch
index) positions whose batch is a pure function of the position, so the
position alone, saved and restored, resumes the stream exactly."""


class BatchStream:
    """Subclasses define ``batches_per_epoch()`` and ``batch(epoch, index)``
    and start at ``self.epoch = self.batch_index = 0``."""

    def state_dict(self):
        return {"epoch": self.epoch, "batch_index": self.batch_index}

    def load_state_dict(self, state):
        self.epoch, self.batch_index = int(state["epoch"]), int(state["batch_index"])

    def __iter__(self):
        return self

    def __next__(self):
        if self.batch_index >= self.batches_per_epoch():
            self.epoch, self.batch_index = self.epoch + 1, 0
        batch = self.batch(self.epoch, self.batch_index)
        self.batch_index += 1
        return batch
