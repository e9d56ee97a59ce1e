"""TorchServe handler for an exported generator: one PNG per request, batched by TorchServe.

This file travels inside the ``.mar`` archive together with ``generator.onnx``,
``manifest.json`` and the model contract module ``manifest.py`` (a copy of
``service/manifest.py``), so the archive is self-contained: seeds become latents by the
same rule as in the service. A text-to-image model's archive adds its vocabulary file and
the tokenizer ``text.py`` (a copy of ``service/text.py``), so captions become the same
token ids as in the service. TorchServe requires exactly one class in a handler module, so
bad input is signalled with plain ``ValueError`` (messages start with the field's name).

Request bodies (JSON): ``{"seed": 7, "label": 3}`` or ``{"z": [nz floats], "label": 3}``;
``label`` is required for conditional generators and refused for unconditional ones;
a text-to-image model takes ``{"seed": 7, "text": "a thick seven"}`` instead.
A bad request gets its own 400 with a JSON error; the rest of the batch is still served.
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import os
import sys
from types import ModuleType
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

logger = logging.getLogger(__name__)


def _load_bundled(model_dir: str, file: str, name: str, installed: str) -> ModuleType:
    """A module bundled in the archive (``file``), else the installed one."""
    bundled = os.path.join(model_dir, file)
    if os.path.isfile(bundled):
        spec = importlib.util.spec_from_file_location(name, bundled)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # pydantic resolves the annotations through it
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(installed)


def _load_contract(model_dir: str) -> ModuleType:
    """The model contract module: the copy bundled in the archive, else the installed one."""
    return _load_bundled(model_dir, "manifest.py", "gan_serve_model_contract", "service.manifest")


class GeneratorHandler:
    """initialize -> preprocess -> inference -> postprocess, as TorchServe expects."""

    def __init__(self) -> None:
        self.initialized = False
        self.session: ort.InferenceSession | None = None
        self.manifest: Any = None
        self.contract: ModuleType | None = None
        self.vocabulary: Any = None  # a text-to-image model's tokenizer

    def initialize(self, context: Any) -> None:
        props = context.system_properties
        model_dir = props.get("model_dir")
        self.contract = _load_contract(model_dir)
        self.manifest = self.contract.Manifest.load(model_dir)
        self.manifest.verify_artifact(model_dir)
        if self.manifest.text is not None:
            text = _load_bundled(model_dir, "text.py", "gan_serve_text", "service.text")
            sums = {side.file: side.sha256 for side in self.manifest.side_files}
            vocab_file = self.manifest.text.vocabulary
            self.vocabulary = text.load_vocabulary(model_dir, sums[vocab_file])
        providers = ["CPUExecutionProvider"]
        gpu_id = props.get("gpu_id")
        if gpu_id is not None and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(gpu_id)}))
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("GAN_SERVE_TS_THREADS", "0"))
        self.session = ort.InferenceSession(
            str(self.manifest.onnx_path(model_dir)), sess_options=options, providers=providers
        )
        self.initialized = True
        logger.info(
            "loaded %s v%s on %s",
            self.manifest.name,
            self.manifest.version,
            self.session.get_providers(),
        )

    # --- request parsing -------------------------------------------------------------------

    @staticmethod
    def _body(request: dict[str, Any]) -> dict[str, Any]:
        body = request.get("body", request.get("data"))
        if isinstance(body, (bytes, bytearray)):
            body = body.decode("utf-8", errors="replace")
        if isinstance(body, str):
            try:
                body = json.loads(body) if body.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"body: not valid JSON ({exc.msg})") from exc
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise ValueError("body: expected a JSON object with 'seed' or 'z'")
        return body

    @staticmethod
    def _int_field(body: dict[str, Any], field: str, low: int, high: int) -> int:
        value = body[field]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{field}: expected an integer, got {value!r}")
        if not low <= value <= high:
            raise ValueError(f"{field}: must be between {low} and {high}, got {value}")
        return value

    def parse(self, request: dict[str, Any]) -> tuple[np.ndarray, Any]:
        """One request -> (latent float32 [nz], condition): the label (0 for unconditional
        models), or a text-to-image model's token ids int64 [max_tokens]."""
        m, contract = self.manifest, self.contract
        body = self._body(request)
        other = "text" if m.takes_text else "label"
        unknown = sorted(set(body) - {"seed", "z", other})
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown field (expected seed or z, and {other})")
        if ("seed" in body) == ("z" in body):
            raise ValueError("seed: give exactly one of 'seed' or 'z'")
        if "seed" in body:
            z = contract.model_latents(m, [self._int_field(body, "seed", 0, contract.MAX_SEED)])[0]
        else:
            raw = body["z"]
            if not isinstance(raw, list) or len(raw) != m.nz:
                raise ValueError(f"z: expected a list of {m.nz} numbers")
            try:
                z = np.asarray(raw, dtype=np.float32)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"z: expected a list of {m.nz} numbers") from exc
            if not np.isfinite(z).all():
                raise ValueError("z: values must be finite")
        if m.takes_text:
            return z, self._tokens(body)
        if m.conditional:
            if "label" not in body:
                raise ValueError(f"label: required, an integer from 0 to {m.num_classes - 1}")
            label = self._int_field(body, "label", 0, m.num_classes - 1)
        else:
            if "label" in body:
                raise ValueError("label: this generator is unconditional and takes no label")
            label = 0
        return z, label

    def _tokens(self, body: dict[str, Any]) -> np.ndarray:
        caption = body.get("text")
        if not isinstance(caption, str):
            raise ValueError("text: required, a caption such as 'a thick seven'")
        try:
            return self.vocabulary.encode(caption)
        except ValueError as exc:  # the tokenizer's CaptionError names the words at fault
            words = ", ".join(self.vocabulary.known_words())
            raise ValueError(f"text: {exc} (the vocabulary: {words})") from None

    # --- the TorchServe pipeline -----------------------------------------------------------

    def preprocess(
        self, requests: list[dict[str, Any]]
    ) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """Batch the valid requests: z [n, nz], labels [n] (or tokens [n, max_tokens]); errors
        maps request index -> message."""
        latents, labels, errors = [], [], {}
        for i, request in enumerate(requests):
            try:
                z, label = self.parse(request)
            except ValueError as exc:
                errors[i] = str(exc)
                continue
            latents.append(z)
            labels.append(label)
        nz = self.manifest.nz
        z_batch = np.stack(latents) if latents else np.empty((0, nz), dtype=np.float32)
        if self.vocabulary is not None:
            width = self.vocabulary.max_tokens
            tokens = np.stack(labels) if labels else np.empty((0, width), dtype=np.int64)
            return z_batch, tokens, errors
        return z_batch, np.asarray(labels, dtype=np.int64), errors

    def inference(self, z: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """uint8 images [n, H, W, C]; ``labels`` holds token ids for a text-to-image model."""
        m, contract = self.manifest, self.contract
        if len(z) == 0:
            return np.empty((0, m.image_size, m.image_size, m.channels), dtype=np.uint8)
        feeds = {contract.LATENT_INPUT: z}
        if m.takes_text:
            feeds[contract.TOKENS_INPUT] = labels
        elif m.conditional:
            feeds[contract.LABEL_INPUT] = labels
        return self.session.run([contract.IMAGE_OUTPUT], feeds)[0]

    @staticmethod
    def postprocess(images: np.ndarray) -> list[bytes]:
        out = []
        for img in images:
            pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
            buf = io.BytesIO()
            pil.save(buf, format="PNG")
            out.append(buf.getvalue())
        return out

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[bytes]:
        if not self.initialized:
            self.initialize(context)
        z, labels, errors = self.preprocess(data)
        pngs = iter(self.postprocess(self.inference(z, labels)))
        responses: list[bytes] = []
        for i in range(len(data)):
            if i in errors:
                field = errors[i].split(":", 1)[0]
                responses.append(json.dumps({"error": errors[i], "field": field}).encode())
                if context is not None:
                    context.set_response_status(400, "Bad Request", idx=i)
                    context.set_response_content_type(i, "application/json")
            else:
                responses.append(next(pngs))
                if context is not None:
                    context.set_response_content_type(i, "image/png")
        return responses
