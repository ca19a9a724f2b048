"""The HTTP service's request and response bodies (pydantic models; FastAPI validates requests against them and
lists them in the OpenAPI schema at /docs)."""

from __future__ import annotations

from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..schemas import SERVER_DECODING_LIMITS, decoding_overrides

Input = Union[str, dict[str, str]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PredictRequest(_Strict):
    inputs: list[Input] | None = Field(None, min_length=1, description="texts (one-field templates) or objects with one key per field")
    input: Input | None = Field(None, description="a single input (instead of inputs)")

    @model_validator(mode="after")
    def _one_of(self):
        if (self.inputs is None) == (self.input is None):
            raise ValueError("give exactly one of 'inputs' (a list) or 'input'")
        return self

    def items(self) -> list:
        return self.inputs if self.inputs is not None else [self.input]


class Prediction(BaseModel):
    label: str
    probabilities: dict[str, float]


class PredictResponse(BaseModel):
    task: str
    predictions: list[Prediction]


class MixedItem(_Strict):
    task: str = Field(..., description="task name")
    input: Input


class MixedRequest(_Strict):
    requests: list[MixedItem] = Field(..., min_length=1)


class MixedResult(Prediction):
    task: str


class MixedResponse(BaseModel):
    results: list[MixedResult]


class GenerateRequest(decoding_overrides(PredictRequest, SERVER_DECODING_LIMITS)):
    """Inputs for a generation task, and decoding settings (``GenerateConfig``'s, within the server's limits); an unset
    setting keeps the artifact's own."""

    def options(self) -> dict:
        return {k: v for k, v in self.model_dump(exclude={"inputs", "input"}).items() if v is not None}


class Generated(BaseModel):
    text: str


class GenerateResponse(BaseModel):
    task: str
    outputs: list[Generated]


class AddTaskRequest(_Strict):
    path: str = Field(..., description="artifact directory on the server's disk")
    name: str | None = Field(None, description="task name (default: the directory's name)")


class ErrorBody(BaseModel):
    detail: Any
    where: str | None = None
    fix: str | None = None
