-- wrk script for POST /v1/predict: bodies cycle through a file of ready JSON bodies (one per
-- line, written by bench/serve_load.py), every request carries its own X-Request-ID, and every
-- response is checked: its X-Request-ID must be one still pending on this thread and a 200 must
-- hold exactly as many predictions as the request sent texts. `done` prints one JSON line.
-- Usage: wrk -t1 -c32 -d10s -s bench/wrk_predict.lua URL -- BODIES_FILE [_] [KEY]

local threads = {}

function setup(thread)
   thread:set("id", #threads + 1)
   table.insert(threads, thread)
end

function init(args)
   bodies, texts = {}, {}
   for line in io.lines(args[1]) do
      table.insert(bodies, line)
      local _, n = line:gsub('","', "")  -- texts are JSON strings joined by ","
      table.insert(texts, n + 1)
   end
   key = args[3]
   sent, answered, ok, refused, other, wrong_id, wrong_count = 0, 0, 0, 0, 0, 0, 0
   pending = {}
end

function request()
   sent = sent + 1
   local i = (sent - 1) % #bodies + 1
   local rid = id .. "-" .. sent
   pending[rid] = texts[i]
   local headers = {["Content-Type"] = "application/json", ["X-Request-ID"] = rid}
   if key then headers["Authorization"] = "Bearer " .. key end
   return wrk.format("POST", "/v1/predict", headers, bodies[i])
end

function response(status, headers, body)
   answered = answered + 1
   local rid = headers["x-request-id"] or headers["X-Request-ID"]
   local expected = rid and pending[rid]
   if not expected then
      wrong_id = wrong_id + 1
   else
      pending[rid] = nil
   end
   if status == 200 then
      ok = ok + 1
      local _, n = body:gsub('"truncated"', "")
      if expected and n ~= expected then wrong_count = wrong_count + 1 end
   elseif status == 503 then
      refused = refused + 1
   else
      other = other + 1
   end
end

function done(summary, latency, requests)
   local t = {sent = 0, answered = 0, ok = 0, refused = 0, other = 0, wrong_id = 0,
              wrong_count = 0, unanswered = 0}
   for _, thread in ipairs(threads) do
      for name, _ in pairs(t) do
         if name ~= "unanswered" then t[name] = t[name] + thread:get(name) end
      end
   end
   -- requests cut off by the end of the run are still pending: sent - answered
   t.unanswered = t.sent - t.answered
   local e = summary.errors
   io.write(string.format(
      '{"requests": %d, "duration_s": %.3f, "rps": %.1f, "p50_ms": %.2f, "p99_ms": %.2f, ' ..
      '"max_ms": %.2f, "ok": %d, "refused": %d, "other_status": %d, "wrong_id": %d, ' ..
      '"wrong_count": %d, "cut_off": %d, "socket_errors": %d}\n',
      summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
      latency:percentile(50) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3,
      t.ok, t.refused, t.other, t.wrong_id, t.wrong_count, t.unanswered,
      e.connect + e.read + e.write + e.timeout))
end
