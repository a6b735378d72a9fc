-- wrk script for bench/run.py: POSTs one chat completion per request and prints a
-- machine-readable summary. The request comes from the environment so that one script
-- serves every target:
--   BENCH_BODY  JSON request body
--   BENCH_AUTH  value of the Authorization header (empty: no header)
-- No response() hook on purpose: defining one makes wrk parse every response body,
-- which costs the load generator CPU on a 2-core box. wrk already counts responses with
-- status > 399 (summary.errors.status); run.py checks one response per target by hand.

wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
    or '{"model":"fake-small","messages":[{"role":"user","content":"Say hello"}],"max_tokens":16}'
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("BENCH_AUTH")
if auth ~= nil and auth ~= "" then
    wrk.headers["Authorization"] = auth
end

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,'
            .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
            .. '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"stdev":%.1f,'
            .. '"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
        summary.requests, summary.duration, summary.bytes,
        e.connect, e.read, e.write, e.status, e.timeout,
        latency.min, latency.mean, latency.max, latency.stdev,
        latency:percentile(50), latency:percentile(90),
        latency:percentile(99), latency:percentile(99.9)
    ))
end
