-- wrk script for bench/soak.py. One wrk process runs one traffic class for one sample window:
--   SOAK_CLASS     chat (plain completions), stream (stream: true) or fault (injected failures)
--   SOAK_AUTH      Authorization header of the demo key
--   SOAK_DELAY_MS  mean pause between a connection's response and its next request (0: none);
--                  soak.py tunes it every window to hold the class's target rate
--   SOAK_WINDOW    window number, part of the fault requests' X-Request-ID
--   SOAK_KEYS_FILE well-formed keys that no organization owns, one a line (fault class)
--   SOAK_STREAM    fake upstream directive that sets a stream's length and pace
--   SOAK_FAULT_MODEL  the model the injected upstream failures ask for
-- done() prints one SOAK_RESULT JSON line: wrk's summary and latency percentiles, plus outcome counts.
--
-- The fault class tags each request with X-Request-ID "soak-<kind>-..."; the gateway echoes it, so
-- response() can tell which injected fault an answer belongs to (wrk does not say which request a
-- response answers). response() counts every answer by class (or fault kind), status, whether a stream
-- ended with [DONE], and an error's code; at a few hundred requests a second that costs wrk little.

local class = os.getenv("SOAK_CLASS") or "chat"
local auth = os.getenv("SOAK_AUTH") or ""
local delay_ms = tonumber(os.getenv("SOAK_DELAY_MS") or "0") or 0
local window = os.getenv("SOAK_WINDOW") or "0"
local keys_file = os.getenv("SOAK_KEYS_FILE") or ""
local stream_directive = os.getenv("SOAK_STREAM") or "[fake words=20 chunk_delay_ms=10]"
local fault_model = os.getenv("SOAK_FAULT_MODEL") or "fake-small"

local threads = {}

function setup(thread)
    thread:set("tid", #threads + 1)
    table.insert(threads, thread)
end

local function chat_body(model, messages, extra)
    local parts = { '{"model":"' .. model .. '","messages":[' }
    for i, m in ipairs(messages) do
        if i > 1 then
            parts[#parts + 1] = ","
        end
        parts[#parts + 1] = '{"role":"' .. m[1] .. '","content":"' .. m[2] .. '"}'
    end
    parts[#parts + 1] = "]" .. (extra or "") .. "}"
    return table.concat(parts)
end

-- Plain traffic: several shapes, so that more than one path of the gateway stays warm.
local CHAT_BODIES = {
    chat_body("fake-small", { { "user", "Say hello" } }, ',"max_tokens":16'),
    chat_body("fake-small", { { "user", "[fake words=120] Write a short story about a lighthouse keeper." } }),
    chat_body("auto", { { "user", "Refactor this Python function to be async and add a unit test." } }),
    chat_body("fake-medium", {
        { "system", "You are a concise assistant." },
        { "user", "What is the capital of France?" },
        { "assistant", "Paris." },
        { "user", "And of Italy?" },
    }, ',"max_tokens":64'),
    -- temperature 0: the organization's exact-match response cache answers it after the first time.
    chat_body("fake-small", { { "user", "Define an invoice in one sentence." } }, ',"temperature":0'),
    chat_body("fake-small", { { "user", "Summarize: the meeting moved to Tuesday at 10." } }, ',"max_tokens":32'),
}

local STREAM_BODIES = {
    chat_body("fake-small", { { "user", stream_directive .. " Tell me about streams." } }, ',"stream":true'),
    chat_body(
        "fake-medium",
        { { "user", stream_directive .. " Count slowly." } },
        ',"stream":true,"stream_options":{"include_usage":true}'
    ),
    chat_body("auto", { { "user", stream_directive .. " Explain TCP keep-alive." } }, ',"stream":true'),
}

-- Fault kinds, in rotation: upstream failures the gateway retries and falls back on (every model
-- fails, the directive is in the prompt), a stream the upstream breaks, and keys that are no good.
local FAULT_KINDS = { "e500", "e429", "e500", "e429", "midstream", "badkey", "malformed" }
local FAULT_PROMPTS = {
    e500 = chat_body(fault_model, { { "user", "[fake status=500] soak fault" } }, ',"max_tokens":16'),
    e429 = chat_body(fault_model, { { "user", "[fake status=429] soak fault" } }, ',"max_tokens":16'),
    midstream = chat_body(
        fault_model,
        { { "user", "[fake words=20 chunk_delay_ms=5 fail_after_chunks=3] soak fault" } },
        ',"stream":true'
    ),
    badkey = chat_body("fake-small", { { "user", "Say hello" } }, ',"max_tokens":16'),
    malformed = chat_body("fake-small", { { "user", "Say hello" } }, ',"max_tokens":16'),
}

local counter = 0
local requests_out = {}
local forged = {}
counts = {}

function init(args)
    math.randomseed(os.time() * 1000 + (tid or 0) * 7919 + tonumber(window))
    counter = math.random(0, 1000)
    local headers = { ["Content-Type"] = "application/json", ["Authorization"] = auth }
    local bodies = class == "stream" and STREAM_BODIES or CHAT_BODIES
    if class ~= "fault" then
        for i, body in ipairs(bodies) do
            requests_out[i] = wrk.format("POST", nil, headers, body)
        end
    elseif keys_file ~= "" then
        local fh = io.open(keys_file, "r")
        if fh then
            for line in fh:lines() do
                if line ~= "" then
                    forged[#forged + 1] = line
                end
            end
            fh:close()
        end
    end
end

function request()
    counter = counter + 1
    if class ~= "fault" then
        return requests_out[(counter % #requests_out) + 1]
    end
    local kind = FAULT_KINDS[(counter % #FAULT_KINDS) + 1]
    local authorization = auth
    if kind == "badkey" then
        local key = forged[((counter + (tid or 0) * 131) % math.max(#forged, 1)) + 1] or "mm_live_missing"
        authorization = "Bearer " .. key
    elseif kind == "malformed" then
        authorization = "Bearer mm_live_not-a-key"
    end
    local headers = {
        ["Content-Type"] = "application/json",
        ["Authorization"] = authorization,
        ["X-Request-ID"] = string.format("soak-%s-%s-%d-%d", kind, window, tid or 0, counter),
    }
    return wrk.format("POST", nil, headers, FAULT_PROMPTS[kind])
end

if delay_ms > 0 then
    -- Jittered around the mean so the connections do not fall into lockstep.
    function delay()
        return math.floor(delay_ms * (0.5 + math.random()))
    end
end

local function count(key)
    counts[key] = (counts[key] or 0) + 1
end

function response(status, headers, body)
    local kind = class
    if class == "fault" then
        local rid = headers["x-request-id"] or headers["X-Request-ID"] or ""
        kind = string.match(rid, "^soak%-(%w+)%-") or "untagged"
    end
    local key = kind .. " " .. status
    if status == 200 then
        if (kind == "stream" or kind == "midstream") and not string.find(body, "data: [DONE]", 1, true) then
            key = key .. " incomplete"
        end
    else
        -- The error's code (circuit_open, upstream_error, invalid_api_key, ...) says which path answered.
        key = key .. " " .. (string.match(body, '"code":%s*"([%w_]+)"') or "-")
        -- The gateway's catch-all answer to an exception it did not expect: never part of the plan.
        if status == 500 and string.find(body, "failed unexpectedly", 1, true) then
            key = key .. " crash"
        end
    end
    count(key)
end

function done(summary, latency, requests)
    local merged = {}
    for _, thread in ipairs(threads) do
        local c = thread:get("counts")
        if c then
            for k, v in pairs(c) do
                merged[k] = (merged[k] or 0) + v
            end
        end
    end
    local parts = {}
    for k, v in pairs(merged) do
        parts[#parts + 1] = string.format('"%s":%d', k, v)
    end
    local e = summary.errors
    io.write(string.format(
        'SOAK_RESULT {"requests":%d,"duration_us":%d,'
            .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
            .. '"latency_us":{"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d},"counts":{%s}}\n',
        summary.requests, summary.duration,
        e.connect, e.read, e.write, e.status, e.timeout,
        latency.mean, latency.max,
        latency:percentile(50), latency:percentile(90), latency:percentile(99),
        table.concat(parts, ",")
    ))
end
