"""Writes node/assets/openapi.json, the node's REST contract (OpenAPI 3.1): edit the routes
here, run `python3 scripts/openapi.py`, commit both. The unit test http::openapi::tests
requires the document to list exactly the routes the node serves, and the e2e test
api_contract that this script reproduces the file and that schemathesis finds nothing
outside it."""
import json
import pathlib
import sys
E = {"$ref": "#/components/responses/Error"}
def errs(*codes):
    return {str(c): E for c in codes}
def ok(code, desc, schema=None, ctype="application/json", headers=None):
    r = {"description": desc}
    if schema is not None:
        r["content"] = {ctype: {"schema": schema}}
    if headers:
        r["headers"] = headers
    return {str(code): r}
def op(summary, tag, responses, params=None, body=None, admin=False, op_id=None):
    o = {"summary": summary, "tags": [tag], "operationId": op_id, "responses": responses}
    if params: o["parameters"] = params
    if body: o["requestBody"] = body
    if admin: o["security"] = [{"bearer": []}, {}]
    return o
def path(name, desc):
    return {"name": name, "in": "path", "required": True, "description": desc, "schema": {"type": "string", "minLength": 1}}
def query(name, desc, schema=None):
    return {"name": name, "in": "query", "required": False, "description": desc, "schema": schema or {"type": "string"}}
obj = {"type": "object"}
def obj_req(*fields):
    return {"type": "object", "required": list(fields)}
arr = lambda items: {"type": "array", "items": items}
text = {"type": "string"}
token_q = query("token", "A play token or a signed token (JWT) allowing play on the stream.")
stream_p = {**path("stream", "The stream name: 1 to 64 of A-Z, a-z, 0-9, _ and -."), "example": "show"}
json_body = lambda schema, desc: {"required": True, "description": desc, "content": {"application/json": {"schema": schema}}}
def offer(direction):
    fingerprint = "8B:87:09:8A:5D:C2:F3:33:EF:C5:B1:F6:84:3A:3D:D6:A3:E2:9C:17:4C:E7:46:3B:1B:CE:84:98:DD:8E:AF:7B"
    common = ["c=IN IP4 0.0.0.0", "a=rtcp:9 IN IP4 0.0.0.0", "a=ice-ufrag:Wsx1", "a=ice-pwd:hW9Kq0pU4d7lmHcmXG3Pq6Aa",
              "a=ice-options:trickle", "a=fingerprint:sha-256 " + fingerprint, "a=setup:actpass"]
    lines = ["v=0", "o=- 4611731400430051336 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0 1", "a=msid-semantic: WMS stream"]
    lines += ["m=audio 9 UDP/TLS/RTP/SAVPF 111"] + common + ["a=mid:0", "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid", "a=" + direction, "a=rtcp-mux",
              "a=rtpmap:111 opus/48000/2", "a=fmtp:111 minptime=10;useinbandfec=1"]
    if direction == "sendonly":
        lines += ["a=msid:stream audio", "a=ssrc:1111 cname:cascade"]
    lines += ["m=video 9 UDP/TLS/RTP/SAVPF 102"] + common + ["a=mid:1", "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid", "a=" + direction, "a=rtcp-mux", "a=rtcp-rsize",
              "a=rtpmap:102 H264/90000", "a=rtcp-fb:102 nack", "a=rtcp-fb:102 nack pli",
              "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"]
    if direction == "sendonly":
        lines += ["a=msid:stream video", "a=ssrc:2222 cname:cascade"]
    return "\r\n".join(lines) + "\r\n"
sdp_body = lambda desc, direction: {"required": True, "description": desc, "content": {"application/sdp": {"schema": {"type": "string"}, "example": offer(direction)}}}
loc = {"Location": {"description": "The session's URL (DELETE it to end the session).", "schema": {"type": "string"}}}
redirect = {"307": {"description": "Another node serves this: the same request at Location.", "headers": {"Location": {"schema": {"type": "string"}}}}}
history_page = {"type": "object", "required": ["items", "next"], "properties": {"items": arr(obj), "next": {"type": ["integer", "null"], "minimum": 0}}}

paths = {
 "/": {"get": op("The page to publish and watch", "page", ok(200, "The page.", text, "text/html; charset=utf-8"), op_id="page")},
 "/vendor/hls.min.js": {"get": op("hls.js, the page's LL-HLS player", "page", {**ok(200, "hls.js.", text, "text/javascript"), **errs(404)}, op_id="hlsJs")},
 "/vendor/hls.js-LICENSE": {"get": op("hls.js's licence", "page", {**ok(200, "The licence.", text, "text/plain; charset=utf-8"), **errs(404)}, op_id="hlsJsLicense")},
 "/healthz": {"get": op("Liveness: the process answers", "health", ok(200, "ok", text, "text/plain; charset=utf-8"), op_id="healthz")},
 "/readyz": {"get": op("Readiness: a member of a cluster with a leader", "health", {**ok(200, "Ready.", text, "text/plain; charset=utf-8"), **errs(503)}, op_id="readyz")},
 "/metrics": {"get": op("Prometheus metrics", "health", ok(200, "The exposition text.", text, "text/plain"), op_id="metrics")},
 "/api/v1/openapi.json": {"get": op("This contract", "api", ok(200, "OpenAPI 3.1.", obj), op_id="openapi")},
 "/whip/{stream}": {
   "post": op("Publish (WHIP, RFC 9725): an SDP offer in, the answer out", "webrtc",
      {**ok(201, "The answer.", text, "application/sdp", loc), **redirect, **errs(400, 401, 403, 404, 406, 409, 413, 415, 503)},
      [stream_p], sdp_body("The publisher's offer (a browser's, H.264 and Opus).", "sendonly"), admin=True, op_id="whipOffer"),
   "options": op("CORS preflight", "webrtc", {"204": {"description": "Allowed methods."}, "200": {"description": "Allowed methods."}}, [stream_p], op_id="whipOptions")},
 "/whip/{stream}/{session}": {
   "delete": op("End a publishing session", "webrtc", {"200": {"description": "Ended."}, **errs(400, 401, 403, 404)}, [stream_p, path("session", "The session id.")], admin=True, op_id="whipDelete"),
   "patch": op("Trickle ICE (not supported: all candidates are in the answer)", "webrtc", errs(405), [stream_p, path("session", "The session id.")], op_id="whipPatch")},
 "/whep/{stream}": {
   "post": op("Watch (WHEP): an SDP offer in, the answer out", "webrtc",
      {**ok(201, "The answer.", text, "application/sdp", loc), **redirect, **errs(400, 401, 403, 404, 406, 409, 413, 415, 503)},
      [stream_p, query("rendition", "A rendition to start with, e.g. video/360p.")], sdp_body("The viewer's offer (a browser's, H.264 and Opus).", "recvonly"), admin=True, op_id="whepOffer"),
   "options": op("CORS preflight", "webrtc", {"204": {"description": "Allowed methods."}, "200": {"description": "Allowed methods."}}, [stream_p], op_id="whepOptions")},
 "/whep/{stream}/{session}": {
   "delete": op("End a viewing session", "webrtc", {"200": {"description": "Ended."}, **errs(400, 401, 403, 404)}, [stream_p, path("session", "The session id.")], admin=True, op_id="whepDelete"),
   "patch": op("Trickle ICE (not supported: all candidates are in the answer)", "webrtc", errs(405), [stream_p, path("session", "The session id.")], op_id="whepPatch")},
 "/api/v1/streams": {
   "get": op("Live streams and pulls", "streams", ok(200, "The streams.", obj_req("streams")), op_id="listStreams"),
   "post": op("Pull a camera (RTSP) or a source as a stream", "streams", {**ok(201, "The pull, as listed.", obj), **errs(400, 401, 409, 415, 503)}, body=json_body(
       {"type": "object", "required": ["id", "source"], "properties": {"id": {"type": "string"}, "source": {"type": "string"}, "transport": {"enum": ["tcp", "udp"]}, "on_demand": {"type": "boolean"}}},
       "The stream to create and where to pull it from."), admin=True, op_id="addPull")},
 "/api/v1/streams/{stream}": {
   "get": op("One stream", "streams", {**ok(200, "The stream.", obj), **errs(400, 404)}, [stream_p], op_id="getStream"),
   "delete": op("Stop a pull", "streams", {**ok(200, "Stopped.", obj), **errs(400, 401, 404, 503)}, [stream_p], admin=True, op_id="removePull")},
 "/api/v1/streams/{stream}/sessions": {"get": op("A stream's sessions on this node", "streams", {**ok(200, "The sessions.", obj_req("sessions")), **errs(400, 401, 404)}, [stream_p], admin=True, op_id="streamSessions")},
 "/api/v1/streams/{stream}/snapshot.jpg": {"get": op("The stream's newest keyframe as a JPEG", "streams", {**ok(200, "The picture.", {"type": "string", "contentMediaType": "image/jpeg"}, "image/jpeg"), **errs(400, 401, 404, 503)}, [stream_p, token_q], op_id="snapshot")},
 "/api/v1/streams/{stream}/restreams": {
   "get": op("A stream's restreams", "restreams", {**ok(200, "The restreams.", obj_req("restreams")), **errs(400, 401, 404)}, [stream_p], admin=True, op_id="listRestreams"),
   "post": op("Restream to an RTMP(S) destination", "restreams", {**ok(201, "The restream.", obj), **redirect, **errs(400, 401, 404, 415, 503)}, [stream_p], json_body({"type": "object", "required": ["url"], "properties": {"url": {"type": "string"}}}, "The destination."), admin=True, op_id="addRestream")},
 "/api/v1/streams/{stream}/restreams/{id}": {"delete": op("Stop a restream", "restreams", {**ok(200, "Stopped.", obj), **redirect, **errs(400, 401, 404)}, [stream_p, path("id", "The restream id.")], admin=True, op_id="removeRestream")},
 "/api/v1/streams/{stream}/recording": {
   "post": op("Start recording a stream", "recordings", {**ok(201, "The recording.", obj), **ok(200, "Already recording.", obj), **redirect, **errs(400, 401, 404, 409, 503)}, [stream_p], admin=True, op_id="startRecording"),
   "delete": op("Stop recording a stream", "recordings", {**ok(200, "The recording.", obj), **redirect, **errs(400, 401, 404, 409, 503)}, [stream_p], admin=True, op_id="stopRecording")},
 "/api/v1/recordings": {"get": op("Recordings on this node", "recordings", {**ok(200, "The recordings.", obj_req("recordings")), **errs(401)}, admin=True, op_id="listRecordings")},
 "/api/v1/recordings/{id}": {"get": op("One recording", "recordings", {**ok(200, "The recording.", obj), **errs(400, 401, 404)}, [path("id", "The recording id.")], admin=True, op_id="getRecording")},
 "/recordings/{id}/index.m3u8": {"get": op("A recording's multivariant playlist (HLS VOD)", "recordings", {**ok(200, "The playlist.", text, "application/vnd.apple.mpegurl"), **errs(400, 401, 404)}, [path("id", "The recording id."), token_q], op_id="recordingPlaylist")},
 "/recordings/{id}/{rendition}/{file}": {"get": op("A recording's media playlist, init or segment", "recordings", {**ok(200, "The file.", text, "application/octet-stream"), **errs(400, 401, 404)}, [path("id", "The recording id."), path("rendition", "The rendition directory."), path("file", "The file."), token_q], op_id="recordingFile")},
 "/hls/{stream}/index.m3u8": {"get": op("A live stream's multivariant playlist (LL-HLS)", "hls", {**ok(200, "The playlist.", text, "application/vnd.apple.mpegurl"), **errs(400, 401, 404, 503)}, [stream_p, token_q], op_id="hlsPlaylist")},
 "/hls/{stream}/{rendition}/{file}": {"get": op("A live rendition's media playlist (blocking reload), init, segment or part", "hls", {**ok(200, "The file.", text, "application/octet-stream"), **errs(400, 401, 404, 503)}, [stream_p, path("rendition", "The rendition."), path("file", "The file."), token_q,
     query("_HLS_msn", "Block until this media sequence number is out.", {"type": "integer", "minimum": 0}), query("_HLS_part", "... and this part of it.", {"type": "integer", "minimum": 0}), query("_HLS_skip", "YES or v2: a delta playlist.")], op_id="hlsFile")},
 "/api/v1/sessions/ended": {"get": op("Sessions that ended recently on this node", "streams", {**ok(200, "The sessions.", obj_req("sessions")), **errs(401)}, admin=True, op_id="endedSessions")},
 "/api/v1/webhooks": {"get": op("Webhook receivers and their delivery state", "integrations", {**ok(200, "The receivers.", obj_req("receivers")), **errs(401)}, admin=True, op_id="webhooks")},
 "/api/v1/history/{table}": {"get": op("What ended on this node, newest first: stream runs, session summaries or recordings", "integrations", {**ok(200, "A page of records.", history_page), **errs(400, 401, 404, 503)},
     [{"name": "table", "in": "path", "required": True, "schema": {"enum": ["streams", "sessions", "recordings"]}},
      query("stream", "Only this stream."), query("kind", "Sessions: publisher or viewer."),
      query("since", "Ended at or after (seconds since the epoch).", {"type": "number"}), query("until", "Ended before (seconds since the epoch).", {"type": "number"}),
      query("limit", "At most this many (1 to 1000, default 100).", {"type": "integer", "minimum": 0}), query("before", "The previous page's next.", {"type": "integer", "minimum": 0})], admin=True, op_id="history")},
 "/api/v1/cluster": {"get": op("The cluster: nodes, leader, placements", "cluster", ok(200, "The cluster.", obj), op_id="cluster")},
 "/api/v1/cluster/join": {"post": op("A new node asks to join (node-to-node)", "cluster", {**ok(200, "Its certificate and the members.", obj), **errs(400, 401, 403, 409, 415, 503)}, body=json_body(obj, "The join request: a token, the node's record and a CSR."), op_id="join")},
 "/api/v1/cluster/tokens": {"post": op("Create a one-time join token", "cluster", {**ok(200, "The token.", obj_req("token")), **errs(401, 503)}, admin=True, op_id="newToken")},
 "/api/v1/cluster/nodes/{id}/drain": {"post": op("Drain a node: no new sessions, streams moved off", "cluster", {**ok(200, "Draining.", obj), **errs(400, 401, 404, 503)}, [path("id", "The node id.")], admin=True, op_id="drain")},
 "/api/v1/cluster/nodes/{id}": {"delete": op("Remove a node from the cluster", "cluster", {**ok(200, "Removed.", obj), **errs(400, 401, 404, 409, 503)}, [path("id", "The node id.")], admin=True, op_id="removeNode")},
}
doc = {
 "openapi": "3.1.0",
 "info": {"title": "Cascade", "version": "1", "description": "The REST surface of a Cascade node: WHIP/WHEP, streams, pulls, restreams, recordings, LL-HLS, the cluster, history and webhooks. Every error is `{\"error\": code, \"message\": text}`. Routes marked with security need `Authorization: Bearer <admin-token>` when the node has one (WHIP/WHEP take publish/play tokens or signed tokens instead). See docs/integrators.md."},
 "servers": [{"url": "/"}],
 "paths": paths,
 "components": {
   "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "The admin token; on WHIP/WHEP a publish/play token or a signed token (JWT)."}},
   "schemas": {"Error": {"type": "object", "required": ["error", "message"], "properties": {"error": {"type": "string", "description": "A stable code, e.g. unauthorized, not_found, malformed_sdp."}, "message": {"type": "string", "description": "What went wrong, for a person."}}}},
   "responses": {"Error": {"description": "Refused: the error's code and message.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}
 }
}
text = json.dumps(doc, indent=2) + "\n"
out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).parent.parent / "node/assets/openapi.json")
out.write_text(text)
