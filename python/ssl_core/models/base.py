"""What BERT and GPT share as models: modes, dropout keys and parameter access."""

import numpy as np


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

    def dropout_generators(self):
        """The generators every dropout draws from (embedding, attention and
        hidden dropout of each layer), in a fixed order."""
        generators = [self.embed_drop.generator]
        for layer in self.layers:
            generators += [layer.attn.generator, layer.drop1.generator, layer.drop2.generator]
        return generators

    def reseed_dropout(self, *key):
        """Re-key every dropout generator from integers ``key``, e.g. (seed,
        step): a step's dropout masks then depend on the step alone, which
        makes a resumed run identical to an uninterrupted one."""
        for i, generator in enumerate(self.dropout_generators()):
            generator.bit_generator.state = np.random.default_rng([*key, i]).bit_generator.state

    def hf_config(self):
        """The config.json a Hugging Face model of this kind is saved with."""
        return self.config.to_hf()
