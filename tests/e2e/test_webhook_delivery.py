"""A real worker process sends the webhooks of the turns it commits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from standardwebhooks import Webhook

from shared.settings import Settings
from tests.support.cluster import Cluster
from tests.support.polling import eventually
from tests.support.receiver import Receiver


async def test_a_worker_posts_each_finished_turn_to_its_webhook_and_the_endpoints(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    receiver = await Receiver().start()
    settings = make_settings(webhook_allow_private=True)
    try:
        with Cluster(settings, tmp_path, workers=1) as cluster:
            async with httpx.AsyncClient(base_url=cluster.base_url, timeout=30) as http:
                endpoint = (
                    await http.post(
                        "/v1/webhooks/endpoints",
                        json={"url": receiver.url, "events": ["turn.completed"]},
                    )
                ).json()
                turn = await http.post(
                    "/v1/sessions/hooked/turns?wait=10",
                    json={"content": "hi", "webhook": receiver.url},
                )
                assert turn.status_code == 200, turn.text
                await eventually(lambda: len(receiver.received) == 2, timeout_s=15)
                secrets = (await http.get("/v1/webhooks/signing-secret")).json()["secrets"]
    finally:
        await receiver.stop()
    verified = []
    for received in receiver.received:
        for secret in (endpoint["secret"], secrets[0]["value"]):
            try:
                verified.append(Webhook(secret).verify(received.body, received.headers))
            except Exception:  # signed with the other target's secret
                continue
    assert [v["data"]["id"] for v in verified] == [turn.json()["id"]] * 2
    assert {r.headers["webhook-id"] for r in receiver.received} == {f"msg_{turn.json()['id']}"}
