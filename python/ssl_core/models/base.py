"""What BERT and GPT share as models: modes and parameter access."""


class Model:
    """A model owns ``params`` (a ParameterStore), an embedding dropout
    ``embed_drop`` and Transformer ``layers``; ``train()``/``eval()`` switch
    every dropout (hidden and attention) on or off."""

    def train(self, training=True):
        self.training = training
        self.embed_drop.training = training
        for layer in self.layers:
            layer.set_training(training)
        return self

    def eval(self):
        return self.train(False)

    def parameters(self):
        """{name: Parameter}, in declaration order."""
        return {p.name: p for p in self.params}

    def num_parameters(self):
        """Scalar parameters, tied ones counted once."""
        return self.params.num_parameters()
