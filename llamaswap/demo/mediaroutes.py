# -*- test-case-name: tests.test_demo -*-
"""
The demo server's audio, image, rerank and stable-diffusion routes.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from twisted.web.iweb import IRequest

from llamaswap.demo.base import DemoBase, DemoError, _json
from llamaswap.demo.media import (
    SPEECH_TYPES,
    documentText,
    rankDocuments,
    speechAudio,
    tinyPNGBase64,
)
from llamaswap.demo.stream import EventStream, sseData
from llamaswap.demo.text import countTokens, generate


class MediaRoutes(DemoBase):
    """
    Routes for speech, transcription, images, reranking and the SD API.
    """

    app = DemoBase.app

    # ------------------------------------------------------------------
    # The other model-dispatched routes of llama-swap (SPEC.md section
    # 3.4): audio, images, rerank, llama-server's native completion and
    # infill, and stable-diffusion.cpp's SD API.  Each names itself in
    # X-Demo-Route (and "route" in JSON bodies) and echoes the model it
    # received in X-Demo-Request-Model (and "model").

    @app.route("/v1/audio/speech", methods=["POST"], endpoint="speech")
    def speech(self, request: IRequest) -> bytes:
        """
        OpenAI text to speech: a few bytes of (fake) audio, typed by
        C{response_format} (C{audio/mpeg} for the default C{mp3}).
        """
        body = self._readJSON(request)
        text = self._requireText(body, "input")
        voice = body.get("voice", "alloy")
        fmt = body.get("response_format", "mp3")
        if fmt not in SPEECH_TYPES:
            raise DemoError(400, "'response_format' must be one of " + ", ".join(SPEECH_TYPES),
                            param="response_format")
        model = self._modelOf(body)
        self._tag(request, "/v1/audio/speech", model)
        audio = speechAudio(model, str(voice), text, fmt)
        request.setResponseCode(200)
        request.setHeader(b"content-type", SPEECH_TYPES[fmt].encode("ascii"))
        request.setHeader(b"content-length", b"%d" % (len(audio),))
        return audio

    @app.route("/v1/audio/voices", methods=["GET", "POST"], endpoint="voices")
    def voices(self, request: IRequest) -> bytes:
        """
        The voices of a text-to-speech model: C{GET ?model=} or C{POST}
        with a JSON body naming the model.
        """
        if request.method == b"POST":
            model = self._modelOf(self._readJSON(request))
        else:
            values = request.args.get(b"model") or [b""]
            model = values[0].decode("utf-8", "replace") or self.settings.model
        self._tag(request, "/v1/audio/voices", model)
        return _json(request, {
            "object": "list",
            "voices": ["alloy", "echo", "fable", "nova"],
            "model": model,
            "route": "/v1/audio/voices",
        })

    @app.route("/v1/audio/transcriptions", methods=["POST"], endpoint="transcriptions")
    async def transcriptions(self, request: IRequest) -> bytes | None:
        """
        OpenAI speech to text, from a multipart form with a C{file}: the
        "transcription" names the file, and the answer carries the file's
        size and SHA-256 (C{file_bytes}, C{file_sha256}) so that tests can
        check it arrived byte for byte.  C{response_format} C{json}
        (default), C{verbose_json}, C{text}, C{srt} or C{vtt};
        C{stream=true} streams C{transcript.text.delta} events.

        @return: (a coroutine that completes with) the body, or L{None}
            once a streamed response has been written.
        """
        form = self._readForm(request)
        upload = form.file("file")
        if upload is None:
            raise DemoError(400, "'file' is required", param="file")
        model = form.first("model") or self.settings.model
        self._tag(request, "/v1/audio/transcriptions", model)
        gen = generate(f"transcribe {upload.sha256}", self.settings.tokens, None)
        text = gen.text.strip()
        fmt = form.first("response_format", "json")
        if form.first("stream") == "true":
            stream = EventStream(request, self._clock)
            try:
                for i, token in enumerate(gen.tokens):
                    if i:
                        await stream.pace(self.settings.tokenDelay)
                    stream.send(sseData({"type": "transcript.text.delta", "delta": token}))
                stream.send(sseData({"type": "transcript.text.done", "text": text}))
            finally:
                stream.close()
            return None
        await self._think(gen.completionTokens)
        if fmt in ("text", "srt", "vtt"):
            request.setResponseCode(200)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return (text + "\n").encode("utf-8")
        if fmt not in ("json", "verbose_json"):
            raise DemoError(400, "'response_format' must be json, verbose_json, text, srt or vtt",
                            param="response_format")
        fields = {name: values[0] for name, values in form.fields.items()}
        result: dict[str, Any] = {
            "text": text,
            "model": model,
            "route": "/v1/audio/transcriptions",
            "filename": upload.filename,
            "file_bytes": upload.size,
            "file_sha256": upload.sha256,
            "fields": fields,
            "usage": {"type": "duration", "seconds": max(1, upload.size // 16000)},
        }
        if fmt == "verbose_json":
            result.update({
                "task": "transcribe",
                "language": form.first("language", "english"),
                "duration": float(max(1, upload.size // 16000)),
                "segments": [],
            })
        return _json(request, result)

    def _images(self, prompt: str, count: int, fmt: str) -> list[dict[str, Any]]:
        data = []
        for i in range(count):
            png = tinyPNGBase64(f"{prompt}#{i}")
            if fmt == "url":
                data.append({"url": "data:image/png;base64," + png, "revised_prompt": prompt})
            else:
                data.append({"b64_json": png, "revised_prompt": prompt})
        return data

    @staticmethod
    def _imageFormat(value: Any) -> str:
        fmt = value if value is not None else "b64_json"
        if fmt not in ("b64_json", "url"):
            raise DemoError(400, "'response_format' must be 'b64_json' or 'url'",
                            param="response_format")
        return fmt

    @app.route("/v1/images/generations", methods=["POST"], endpoint="image_generations")
    def imageGenerations(self, request: IRequest) -> bytes:
        """
        OpenAI image generation: C{n} tiny PNGs whose colour depends on the
        prompt, as C{b64_json} (default) or data URLs.
        """
        body = self._readJSON(request)
        prompt = self._requireText(body, "prompt")
        count = self._count(body, "n", 1, 10)
        fmt = self._imageFormat(body.get("response_format"))
        model = self._modelOf(body)
        self._tag(request, "/v1/images/generations", model)
        return _json(request, {
            "created": int(self._clock.seconds()),
            "data": self._images(prompt, count, fmt),
            "model": model,
            "route": "/v1/images/generations",
        })

    @app.route("/v1/images/edits", methods=["POST"], endpoint="image_edits")
    def imageEdits(self, request: IRequest) -> bytes:
        """
        OpenAI image edit, from a multipart form with an C{image} (or
        C{image[]}) file: the generation shape, plus the size and SHA-256
        of the first image (C{file_bytes}, C{file_sha256}) and a
        description of every file part (C{files}).
        """
        form = self._readForm(request)
        image = form.file("image", "image[]")
        if image is None:
            raise DemoError(400, "'image' is required", param="image")
        prompt = form.first("prompt")
        if prompt is None:
            raise DemoError(400, "'prompt' is required", param="prompt")
        try:
            count = int(form.first("n", "1") or "1")
        except ValueError:
            count = 0
        if not 1 <= count <= 10:
            raise DemoError(400, "'n' must be an integer in [1, 10]", param="n")
        fmt = self._imageFormat(form.first("response_format"))
        model = form.first("model") or self.settings.model
        self._tag(request, "/v1/images/edits", model)
        return _json(request, {
            "created": int(self._clock.seconds()),
            "data": self._images(f"{prompt}|{image.sha256}", count, fmt),
            "model": model,
            "route": "/v1/images/edits",
            "file_bytes": image.size,
            "file_sha256": image.sha256,
            "files": [f.describe() for f in form.files],
        })

    @app.route("/v1/rerank", methods=["POST"], endpoint="rerank_v1")
    @app.route("/rerank", methods=["POST"], endpoint="rerank")
    @app.route("/reranking", methods=["POST"], endpoint="reranking")
    @app.route("/v1/reranking", methods=["POST"], endpoint="reranking_v1")
    def rerank(self, request: IRequest) -> bytes:
        """
        llama-server reranking: C{{"results": [{"index", "relevance_score"}]}},
        best first, at most C{top_n}; C{return_documents} adds each
        document.
        """
        body = self._readJSON(request)
        query = self._requireText(body, "query")
        documents = body.get("documents")
        found = [documentText(d) for d in documents] if isinstance(documents, list) else None
        if not found or any(t is None for t in found):
            raise DemoError(400, "'documents' must be a non-empty array of strings",
                            param="documents")
        texts = [t for t in found if t is not None]
        topN = body.get("top_n")
        if topN is not None and (isinstance(topN, bool) or not isinstance(topN, int) or topN < 0):
            raise DemoError(400, "'top_n' must be a non-negative integer", param="top_n")
        route = request.path.decode("ascii", "replace")
        model = self._modelOf(body)
        self._tag(request, route, model)
        results = []
        for index, score in rankDocuments(query, texts, topN):
            result: dict[str, Any] = {"index": index, "relevance_score": score}
            if body.get("return_documents") is True:
                result["document"] = {"text": texts[index]}
            results.append(result)
        tokens = countTokens(query) + sum(countTokens(t) for t in texts)
        return _json(request, {
            "model": model,
            "object": "list",
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "results": results,
            "route": route,
        })

    def _sdImages(self, request: IRequest, route: str, body: dict[str, Any],
                  extra: dict[str, Any]) -> bytes:
        prompt = body.get("prompt", "")
        if not isinstance(prompt, str):
            raise DemoError(400, "'prompt' must be a string", param="prompt")
        count = self._count(body, "batch_size", 1, 10)
        model = self._modelOf(body)
        self._tag(request, route, model)
        images = [tinyPNGBase64(f"{route}|{prompt}|{i}") for i in range(count)]
        info = {"prompt": prompt, "model": model, "route": route,
                "seed": body.get("seed", -1), **extra}
        return _json(request, {
            "images": images,
            "parameters": body,
            "info": json.dumps(info),
            "model": model,
            "route": route,
        })

    @app.route("/sdapi/v1/txt2img", methods=["POST"], endpoint="txt2img")
    def txt2img(self, request: IRequest) -> bytes:
        """
        stable-diffusion.cpp's (A1111-style) text to image:
        C{{"images": [base64 PNG], "parameters": <the request>, "info"}}.
        """
        body = self._readJSON(request)
        return self._sdImages(request, "/sdapi/v1/txt2img", body, {})

    @app.route("/sdapi/v1/img2img", methods=["POST"], endpoint="img2img")
    def img2img(self, request: IRequest) -> bytes:
        """
        Image to image: like C{txt2img}, with the size and SHA-256 of the
        first decoded C{init_images} entry in C{info} (and at top level).
        """
        body = self._readJSON(request)
        images = body.get("init_images")
        if not isinstance(images, list) or not images or not isinstance(images[0], str):
            raise DemoError(400, "'init_images' must be a non-empty array of base64 strings",
                            param="init_images")
        encoded = images[0].split(",", 1)[1] if images[0].startswith("data:") else images[0]
        try:
            first = base64.b64decode(encoded, validate=True)
        except ValueError:
            raise DemoError(400, "'init_images' must be base64", param="init_images") from None
        extra = {"init_image_bytes": len(first),
                 "init_image_sha256": hashlib.sha256(first).hexdigest()}
        return self._sdImages(request, "/sdapi/v1/img2img", body, extra)

    @app.route("/sdapi/v1/loras", methods=["GET"], endpoint="loras")
    def loras(self, request: IRequest) -> bytes:
        """
        The LoRAs of an SD model (C{?model=}): a JSON array, so the route
        and model are in the headers and in each entry's C{path}.
        """
        values = request.args.get(b"model") or [b""]
        model = values[0].decode("utf-8", "replace") or self.settings.model
        self._tag(request, "/sdapi/v1/loras", model)
        return _json(request, [
            {"name": name, "alias": name, "path": f"/loras/{model}/{name}.safetensors"}
            for name in ("demo-detail", "demo-style")
        ])
