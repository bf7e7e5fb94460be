"""Writes the support-replies chats (train / validation / test .jsonl) from the support tickets beside them
(recipes/data/support_tickets): each customer message, answered in the shop's house format, a routing line and the
team's fixed reply. Run from the repository root: python recipes/data/support_replies/make_replies.py"""

import csv
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
TICKETS = HERE.parent / "support_tickets"
REPLIES = {
    "billing": "Route: BILLING / priority 2\nReply: Thanks for telling us. Our billing team checks every charge "
               "and refund on your order and writes back within one business day.",
    "shipping": "Route: SHIPPING / priority 2\nReply: Thanks for telling us. Our delivery team is tracing your "
                "parcel with the carrier and writes back within one business day.",
    "technical": "Route: TECHNICAL / priority 1\nReply: Thanks for telling us. Our engineers are looking into the "
                 "problem you describe and write back as soon as it is fixed.",
    "account": "Route: ACCOUNT / priority 3\nReply: Thanks for telling us. Our account team will update your "
               "profile settings and confirm by email within one business day.",
}


def chat(text: str, label: str) -> dict:
    return {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": REPLIES[label]}]}


if __name__ == "__main__":
    for split in ("train", "validation", "test"):
        with (TICKETS / f"{split}.csv").open(newline="", encoding="utf-8") as rows, \
                (HERE / f"{split}.jsonl").open("w", encoding="utf-8") as out:
            for row in csv.DictReader(rows):
                out.write(json.dumps({"id": row["id"], **chat(row["text"], row["label"])}, ensure_ascii=False) + "\n")
