/* Accel: a live it/s + VRAM badge next to the WebUI's progress bar, and the live panel of the Accel tab.
 *
 * Polls GET ./accel/v1/stats once a second, and only while this page has a txt2img/img2img job running (the
 * WebUI's requestProgress() puts a .progressDiv in the results panel and shows #<tab>_interrupt) or the Accel
 * tab is open. Polling starts from onAfterUiUpdate/onUiTabChange and stops by itself. Everything lives in this
 * closure (the WebUI loads every extension script into one global scope); the pure helpers are exported for
 * node when `module` exists (tests/unit/test_javascript.py).
 */
(function() {
    "use strict";

    var STATS_URL = "./accel/v1/stats";
    var POLL_MS = 1000;
    var TABS = ["txt2img", "img2img"];
    var ACCEL_TAB_ID = "tab_accel";
    var GIB = 1024 * 1024 * 1024;
    var MIB = 1024 * 1024;

    function isNumber(x) {
        return typeof x === "number" && isFinite(x);
    }

    function formatRate(its) {
        if (!isNumber(its) || its <= 0) return "-";
        return its >= 1 ? its.toFixed(2) + " it/s" : (1 / its).toFixed(2) + " s/it";
    }

    function formatBytes(n) {
        if (!isNumber(n) || n < 0) return "-";
        return n >= GIB ? (n / GIB).toFixed(1) + " GB" : Math.round(n / MIB) + " MB";
    }

    function formatUsedTotal(used, total) {
        if (!isNumber(used)) return "-";
        if (!isNumber(total) || total <= 0) return formatBytes(used);
        if (used >= GIB || total >= GIB) return (used / GIB).toFixed(1) + "/" + (total / GIB).toFixed(1) + " GB";
        return Math.round(used / MIB) + "/" + Math.round(total / MIB) + " MB";
    }

    function formatSeconds(s) {
        if (!isNumber(s) || s < 0) return "-";
        return s < 1 ? Math.round(s * 1000) + " ms" : s.toFixed(2) + " s";
    }

    function escapeHtml(text) {
        return String(text === undefined || text === null ? "" : text).replace(/[&<>"']/g, function(c) {
            return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c];
        });
    }

    function memoryText(vram) {
        if (!vram || !isNumber(vram.used)) return "";
        return vram.kind + " " + formatUsedTotal(vram.used, vram.total);
    }

    function badgeText(stats) {
        if (!stats) return "Accel: …";
        var gen = stats.generation || {};
        var parts = [];
        if (stats.enabled !== false) parts.push(formatRate(gen.its));
        var mem = memoryText(stats.vram);
        if (mem) parts.push(mem);
        if (stats.compile) parts.push(stats.compile);
        return parts.join(" · ") || "Accel";
    }

    function stagesText(image) {
        if (!image || !image.stages) return "";
        var st = image.stages;
        var text = "text encoder " + formatSeconds(st.text_encoder) + ", UNet " + formatSeconds(st.unet) +
            ", VAE " + formatSeconds(st.vae_decode);
        if (image.rate && image.rate !== "-") text += " (" + image.rate + ")";
        return text;
    }

    function nvmlText(nvml) {
        if (!nvml) return "";
        if (!nvml.available) return "NVML: " + (nvml.reason || "unavailable");
        var parts = [];
        if (nvml.name) parts.push(nvml.name);
        if (isNumber(nvml.memory_used)) parts.push(formatUsedTotal(nvml.memory_used, nvml.memory_total));
        if (isNumber(nvml.utilization)) parts.push(nvml.utilization + "% busy");
        if (isNumber(nvml.power_w)) parts.push(nvml.power_w + (isNumber(nvml.power_limit_w) ? "/" + nvml.power_limit_w : "") + " W");
        if (isNumber(nvml.clock_sm_mhz)) parts.push(nvml.clock_sm_mhz + " MHz");
        if (isNumber(nvml.temperature_c)) parts.push(nvml.temperature_c + " °C");
        return parts.join(", ");
    }

    function torchText(mem) {
        if (!mem) return "";
        if (!mem.available) return "torch: " + (mem.reason || "unavailable");
        return "allocated " + formatBytes(mem.allocated) + ", reserved " + formatBytes(mem.reserved) +
            ", peak " + formatBytes(mem.peak_allocated);
    }

    function ramText(ram) {
        if (!ram) return "";
        if (!ram.available) return ram.reason || "unavailable";
        return "process " + formatBytes(ram.process_rss) + ", system " + formatUsedTotal(ram.total - ram.free, ram.total);
    }

    function statusText(stats) {
        var gen = (stats && stats.generation) || {};
        if (stats && stats.enabled === false) return "live timing off (Settings > Accel > accel_live_stats)";
        if (!gen.running) return gen.images ? "idle" : "idle, no image timed yet";
        var text = "running";
        if (isNumber(gen.step) && isNumber(gen.total)) text += ", step " + gen.step + "/" + gen.total;
        if (gen.pass > 1) text += " (pass " + gen.pass + ")";
        return text;
    }

    function badgeTitle(stats) {
        if (!stats) return "";
        var gen = stats.generation || {};
        var mem = stats.memory || {};
        return ["Accel: " + statusText(stats),
            "last image: " + (stagesText(gen.last_image) || "-"),
            nvmlText(mem.nvml), torchText(mem.torch)].filter(Boolean).join("\n");
    }

    function renderStatsHtml(stats) {
        if (!stats) return "<p>No reading yet.</p>";
        var gen = stats.generation || {};
        var mem = stats.memory || {};
        var rows = [
            ["Status", statusText(stats)],
            ["Speed", formatRate(gen.its)],
            ["Current image", stagesText(gen.current_image) || "-"],
            ["Last image", stagesText(gen.last_image) || "-"],
            ["GPU (NVML)", nvmlText(mem.nvml) || "-"],
            ["torch CUDA memory", torchText(mem.torch) || "-"],
            ["RAM", ramText(mem.ram) || "-"],
            ["Compile", stats.compile || "idle"]
        ];
        if (stats.stages_missing && Object.keys(stats.stages_missing).length) {
            rows.push(["Stages not timed", Object.keys(stats.stages_missing).map(function(k) {
                return k + ": " + stats.stages_missing[k];
            }).join("; ")]);
        }
        return '<table class="accel-live-table"><tbody>' + rows.map(function(r) {
            return "<tr><th>" + escapeHtml(r[0]) + "</th><td>" + escapeHtml(r[1]) + "</td></tr>";
        }).join("") + "</tbody></table>";
    }

    function byId(root, id) {
        return root && root.querySelector ? root.querySelector("#" + id) : null;
    }

    function isShown(el) {
        return !!el && !!el.style && el.style.display === "block";
    }

    function jobRunning(root, tab) {
        if (isShown(byId(root, tab + "_interrupt")) || isShown(byId(root, tab + "_interrupting"))) return true;
        var container = byId(root, tab + "_gallery_container");
        var panel = container && container.parentNode;
        return !!(panel && panel.querySelector && panel.querySelector(".progressDiv"));
    }

    function accelTabVisible(root) {
        var current = typeof get_uiCurrentTabContent === "function" ? get_uiCurrentTabContent() : null; // eslint-disable-line no-undef
        return !!current && current.id === ACCEL_TAB_ID && !!byId(root, "accel-live-body");
    }

    function liveStatsWanted() {
        var options = typeof opts === "object" && opts ? opts : {}; // eslint-disable-line no-undef
        return options.accel_live_stats !== false;
    }

    var api = {
        formatRate: formatRate, formatBytes: formatBytes, formatUsedTotal: formatUsedTotal,
        formatSeconds: formatSeconds, escapeHtml: escapeHtml, badgeText: badgeText, badgeTitle: badgeTitle,
        renderStatsHtml: renderStatsHtml, statusText: statusText, jobRunning: jobRunning, STATS_URL: STATS_URL
    };
    if (typeof module === "object" && module && module.exports) {
        module.exports = api;
    }
    if (typeof onAfterUiUpdate !== "function" || typeof gradioApp !== "function") return; // not in the WebUI

    var timer = null;
    var inFlight = false;
    var lastStats = null;
    var wasRunning = false;

    function badgeFor(root, tab, create) {
        var badge = byId(root, "accel-badge-" + tab);
        if (badge || !create) return badge;
        var container = byId(root, tab + "_gallery_container");
        if (!container || !container.parentNode) return null;
        badge = document.createElement("div");
        badge.id = "accel-badge-" + tab;
        badge.className = "accel-badge";
        container.parentNode.insertBefore(badge, container);
        return badge;
    }

    function updateView(root, running, tabOpen) {
        TABS.forEach(function(tab) {
            var show = running.indexOf(tab) !== -1 && liveStatsWanted();
            var badge = badgeFor(root, tab, show);
            if (!badge) return;
            if (!show) {
                badge.remove();
                return;
            }
            badge.textContent = badgeText(lastStats);
            badge.title = badgeTitle(lastStats);
        });
        var body = tabOpen ? byId(root, "accel-live-body") : null;
        if (body) body.innerHTML = renderStatsHtml(lastStats);
    }

    function poll() {
        if (inFlight) return;
        inFlight = true;
        fetch(STATS_URL, {credentials: "same-origin", cache: "no-store"}).then(function(res) {
            return res.ok ? res.json() : null;
        }).catch(function() {
            return null;
        }).then(function(stats) {
            inFlight = false;
            lastStats = stats;
            var root = gradioApp();
            updateView(root, TABS.filter(function(t) {
                return jobRunning(root, t);
            }), accelTabVisible(root));
        });
    }

    function tick() {
        timer = null;
        var root = gradioApp();
        var running = TABS.filter(function(t) {
            return jobRunning(root, t);
        });
        var tabOpen = accelTabVisible(root);
        if (running.length && !wasRunning) lastStats = null; // a new job: no numbers from the previous one
        wasRunning = running.length > 0;
        updateView(root, running, tabOpen);
        if (!tabOpen && (!running.length || !liveStatsWanted())) return; // nothing to show: stop polling
        poll();
        timer = setTimeout(tick, POLL_MS);
    }

    function wake() {
        if (timer !== null) return;
        var root = gradioApp();
        if (accelTabVisible(root) || TABS.some(function(t) {
            return jobRunning(root, t);
        })) {
            timer = setTimeout(tick, 0);
        }
    }

    onAfterUiUpdate(wake);
    if (typeof onUiTabChange === "function") onUiTabChange(wake);
})();
