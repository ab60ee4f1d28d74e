"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class PredictRequest(BaseModel):
    """Strict: a number where a string belongs is an error, not silently converted."""

    model_config = ConfigDict(extra="forbid", strict=True)

    texts: list[str] = Field(min_length=1, description="texts to classify (1 to max_batch)")

    @field_validator("texts")
    @classmethod
    def no_blank_texts(cls, texts: list[str]) -> list[str]:
        blank = [i for i, text in enumerate(texts) if not text.strip()]
        if blank:
            raise ValueError(f"texts must not be empty or blank (index {blank[0]})")
        return texts


class Prediction(BaseModel):
    label: str
    probabilities: dict[str, float]
    truncated: bool = Field(description="the text was longer than max_length tokens")


class MultiLabelPrediction(BaseModel):
    labels: list[str] = Field(description="labels whose score reaches their threshold")
    scores: dict[str, float]
    truncated: bool = Field(description="the text was longer than max_length tokens")


class PredictResponse(BaseModel):
    predictions: list[Prediction | MultiLabelPrediction]


class WordAttribution(BaseModel):
    word: str
    start: int = Field(description="character offset in the text: text[start:end] == word")
    end: int
    score: float = Field(
        description="signed share of the evidence (positive: for the label); |scores| sum to 1"
    )


class LabelExplanation(BaseModel):
    label: str
    probability: float
    attributions: list[WordAttribution]


class Explanation(LabelExplanation):
    truncated: bool = Field(description="words past max_length tokens score 0")


class MultiLabelExplanation(BaseModel):
    labels: list[str] = Field(description="the predicted labels, each explained")
    truncated: bool
    explanations: list[LabelExplanation]


class ExplainResponse(BaseModel):
    explanations: list[Explanation | MultiLabelExplanation]


class ClassifyDocumentRequest(BaseModel):
    """One document as plain text; the options are those of `finlora predict --document`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    text: str = Field(description="the document text, at most max_document_chars characters")
    segment: Literal["sentences", "windows"] = Field(
        "sentences",
        description="pieces: sentences (over-long ones in token windows) or token windows",
    )
    window: int | None = Field(
        None, ge=1, description="tokens per window (default: max_length minus special tokens)"
    )
    stride: int | None = Field(
        None, ge=1, description="tokens between window starts, at most window (default: half)"
    )

    @field_validator("text")
    @classmethod
    def not_blank(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("text must not be empty or blank")
        return text


class DocumentSpan(BaseModel):
    start: int = Field(description="character offset in `text`: text[start:end] == span text")
    end: int
    text: str
    labels: list[str]
    scores: dict[str, float]


class LabelCount(BaseModel):
    count: int = Field(description="pieces carrying this label")
    max_score: float


class DocumentSummary(BaseModel):
    labelled_pieces: int
    per_label: dict[str, LabelCount]


class ClassifyDocumentResponse(BaseModel):
    characters: int
    segment: str
    window: int
    stride: int
    pieces: int = Field(description="sentences and windows classified")
    labels: list[str]
    multi_label: bool
    thresholds: dict[str, float] | None
    spans: list[DocumentSpan] = Field(
        description="multi-label: pieces with at least one label; single-label: every piece"
    )
    summary: DocumentSummary


class ErrorResponse(BaseModel):
    detail: str
    request_id: str
