-- wrk script: POST one valid application per request, each under a fresh Idempotency-Key.
-- Environment: BENCH_BODY_FILE (the JSON body), BENCH_TOKEN (a portal API key), BENCH_KEY_PREFIX (unique per run).
-- done() prints one JSON line with the counts and the latency percentiles (microseconds).

local threads = {}

function setup(thread)
   thread:set("id", #threads + 1)
   table.insert(threads, thread)
end

function init(args)
   local file = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
   body = file:read("*a")
   file:close()
   headers = {
      ["Content-Type"] = "application/json",
      ["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN"),
   }
   prefix = os.getenv("BENCH_KEY_PREFIX") .. "-" .. id .. "-"
   sent = 0
   accepted = 0
   rejected = 0
end

function request()
   sent = sent + 1
   headers["Idempotency-Key"] = prefix .. sent
   return wrk.format("POST", "/v1/applications", headers, body)
end

function response(status, _headers, _body)
   if status == 202 then
      accepted = accepted + 1
   else
      rejected = rejected + 1
   end
end

function done(summary, latency, _requests)
   local ok, bad = 0, 0
   for _, thread in ipairs(threads) do
      ok = ok + thread:get("accepted")
      bad = bad + thread:get("rejected")
   end
   local e = summary.errors
   io.write(string.format(
      '{"requests":%d,"accepted":%d,"rejected":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
      '"max_us":%d,"socket_errors":%d}\n',
      summary.requests, ok, bad, summary.duration, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.max, e.connect + e.read + e.write + e.timeout))
end
