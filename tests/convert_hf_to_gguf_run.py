"""Run llama.cpp's ``convert_hf_to_gguf.py`` on a tiny test model.

    python convert_hf_to_gguf_run.py LLAMA_CPP_DIR MODEL_DIR [converter options ...]

The converter is imported from ``LLAMA_CPP_DIR`` with that tree's own ``gguf-py`` first on
``sys.path``. Every model class's vocabulary step is replaced by a stand-in: ``vocab_size``
tokens ``<t0>``, ``<t1>`` ... as a BPE-style (``gpt2``) vocabulary, so that random models need
no tokenizer files; the config's ``bos``/``eos``/``pad`` token ids are written as the special
tokens. Tensors and model metadata are written by the converter's own code.
"""

from __future__ import annotations

import sys


def main() -> None:
    root = sys.argv.pop(1)
    sys.path[:0] = [f"{root}/gguf-py", root]
    import convert_hf_to_gguf as converter

    pick = converter.get_model_class

    def get_model_class(*args, **kwargs):
        cls = pick(*args, **kwargs)

        def set_vocab(self) -> None:
            n = int(self.find_hparam(["vocab_size"]))
            w = self.gguf_writer
            w.add_tokenizer_model("gpt2")
            w.add_tokenizer_pre("default")
            w.add_token_list([f"<t{i}>" for i in range(n)])
            w.add_token_types([1] * n)
            for key, add in (
                ("bos_token_id", w.add_bos_token_id),
                ("eos_token_id", w.add_eos_token_id),
                ("pad_token_id", w.add_pad_token_id),
            ):
                value = self.hparams.get(key)
                if isinstance(value, int) and 0 <= value < n:
                    add(value)

        cls.set_vocab = set_vocab
        return cls

    converter.get_model_class = get_model_class
    sys.argv[0] = "convert_hf_to_gguf.py"
    converter.main()


if __name__ == "__main__":
    main()
