"""manage_tools through a real MCP client and Ariel's HTTP app: roles, sealed tokens, and servers agents use."""

from __future__ import annotations

import json

import pytest
from fastmcp.exceptions import ToolError

from tests.mcp_server.callers import ask, call, client
from tests.mcp_server.mcp_peers import TOKEN, Peer

ADMIN = "dev:ada:acme:admin"
MEMBER = "dev:max:acme:member"
VIEWER = "dev:vic:acme:viewer"


async def test_a_token_given_to_manage_tools_appears_in_no_answer_and_no_audit_entry(
    url: str, bearer_peer: Peer
) -> None:
    async with client(url, ADMIN) as ada:
        with pytest.raises(ToolError) as refused:
            await ask(ada, "manage_tools", action="add", name="locked", transport="http", url=bearer_peer.url)
        assert "needs authentication" in str(refused.value)
        added = await ask(ada, "manage_tools", action="add", name="locked", transport="http", url=bearer_peer.url,
                          token=TOKEN, scope="org")
        answers = [added, await ask(ada, "manage_tools", action="list"),
                   await ask(ada, "manage_tools", action="get", name="locked"),
                   await ask(ada, "manage_tools", action="test", name="locked"),
                   await ask(ada, "get_audit_log")]
    assert added["servers"][0]["status"] == "approved" and added["servers"][0]["tools"] == ["echo", "add"]
    assert ("tool_server.add", "locked", "ok") in [(e["action"], e["target"], e["outcome"]) for e in answers[-1]]
    assert TOKEN not in json.dumps(answers) + str(refused.value)


async def test_viewers_list_members_add_their_own_and_only_admins_approve(url: str, open_peer: Peer) -> None:
    assert (await call(url, VIEWER, "manage_tools", action="list"))["servers"] == []
    with pytest.raises(ToolError, match="manage_tools add needs the member role or higher; you are a viewer"):
        await call(url, VIEWER, "manage_tools", action="add", name="mine", transport="http", url=open_peer.url)
    added = await call(url, MEMBER, "manage_tools", action="add", name="mine", transport="http", url=open_peer.url)
    assert added["servers"][0]["status"] == "pending" and added["servers"][0]["scope"] == "user"
    with pytest.raises(ToolError, match="manage_tools approve needs the admin role or higher; you are a member"):
        await call(url, MEMBER, "manage_tools", action="approve", name="mine")
    # The viewer does not see a member's own server; the admin who approves does.
    assert (await call(url, VIEWER, "manage_tools", action="list"))["servers"] == []
    read = await call(url, ADMIN, "manage_tools", action="get", name="mine")
    approved = await call(url, ADMIN, "manage_tools", action="approve", name="mine",
                          digest=read["servers"][0]["tools_digest"])
    assert approved["servers"][0]["status"] == "approved" and approved["servers"][0]["owner"] == "max"


async def test_removing_a_server_an_agent_uses_needs_confirmation(url: str, open_peer: Peer) -> None:
    await call(url, ADMIN, "manage_tools", action="add", name="everything", transport="http", url=open_peer.url,
               scope="org")
    await call(url, MEMBER, "create_agent", name="Echoer", instructions="Echo.", model="ariel/scripted",
               script=[{"reply": "done"}], mcp_tools=[{"server": "everything", "tools": ["echo"]}])
    listed = await call(url, VIEWER, "manage_tools", action="list")
    assert [(s["name"], s["used_by"]) for s in listed["servers"]] == [("everything", ["echoer"])]
    with pytest.raises(ToolError, match="MCP server 'everything' is used by echoer: their runs lose its tools"):
        await call(url, ADMIN, "manage_tools", action="remove", name="everything")
    done = await call(url, ADMIN, "manage_tools", action="remove", name="everything", confirm=True)
    assert done["done"] == "MCP server 'everything' and its credentials are gone"
