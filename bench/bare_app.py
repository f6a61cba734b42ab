"""The baseline of bench/api_requests.py: a bare FastAPI JSON endpoint, nothing behind it."""

from fastapi import FastAPI

app = FastAPI()


@app.get("/v1/tasks/{task_id}")
async def task(task_id: str) -> dict[str, object]:
    return {"id": task_id, "object": "image.generation.task", "status": "pending", "progress": 0}
