"""The dashboard in headless Chromium (Debian's chromium and chromium-driver,
driven by selenium), against a running `tern broker`.

    python3 dashboard.py HTTP_URL MQTT_PORT SCREENSHOT_DIR

The broker has the users root (an admin) and bob, records sensors/#, and
runs two rules on `bell` (echo-a publishes out/a, echo-b out/b). A
webhook receiver runs in this process. Screenshots of each page go to
SCREENSHOT_DIR. Exits non-zero (with the reason) on any failure.
"""

import http.server
import json
import os
import queue
import subprocess
import sys
import threading

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

URL, MQTT, SHOTS = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(SHOTS, exist_ok=True)
WAIT = 15

got = queue.Queue()


class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        got.put(json.loads(body).get("payload"))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *a):
        pass


hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
threading.Thread(target=hook.serve_forever, daemon=True).start()
HOOK_PORT = hook.server_address[1]


def browser():
    o = webdriver.ChromeOptions()
    o.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        o.add_argument(a)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=o)


# The tables are drawn again every 2 s: an element found may be gone.
FLEETING = (NoSuchElementException, StaleElementReferenceException)


def until(d, cond, what):
    return WebDriverWait(d, WAIT, ignored_exceptions=FLEETING).until(lambda _: cond(), what)


def click(d, find, what):
    """Clicks what `find` finds, found again if it was drawn anew."""
    def go():
        find().click()
        return True
    until(d, go, what)


def pub(topic, payload, *extra):
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", MQTT, "-t", topic, "-m", payload, *extra],
                   check=True)


def shot(d, name):
    d.save_screenshot(os.path.join(SHOTS, name + ".png"))


def sign_in(d, user, password):
    d.get(URL + "/")
    until(d, lambda: d.find_element(By.ID, "login").is_displayed(), "the sign-in form")
    d.find_element(By.ID, "login-user").send_keys(user)
    d.find_element(By.ID, "login-password").send_keys(password)
    d.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()
    until(d, lambda: d.find_element(By.ID, "tabs").is_displayed(), "signed in")


def tab(d, name):
    d.find_element(By.CSS_SELECTOR, f"#tabs button[data-tab={name}]").click()


def row(d, topic):
    rows = d.find_elements(By.CSS_SELECTOR, f'#tree .row[data-topic="{topic}"]')
    return rows[0] if rows else None


def open_topic(d, topic):
    search = d.find_element(By.ID, "search")
    search.clear()
    search.send_keys(topic)
    until(d, lambda: row(d, topic) is not None, f"the row of {topic}")
    row(d, topic).click()
    until(d, lambda: d.find_elements(By.ID, "last-value"), f"the page of {topic}")


def accessibility(d):
    """Every form control has a label; text and buttons have a contrast of
    at least 4.5:1 (WCAG AA) against what is behind them."""
    unlabelled = d.execute_script("""
        return [...document.querySelectorAll('input, select, textarea')]
          .filter(e => e.type !== 'hidden' && !e.labels.length && !e.getAttribute('aria-label'))
          .map(e => e.id || e.outerHTML);""")
    assert not unlabelled, f"controls without a label: {unlabelled}"
    low = d.execute_script("""
        const rgb = s => s.match(/[\\d.]+/g).slice(0, 3).map(Number);
        const lum = c => { const [r, g, b] = c.map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
                           return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
        const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
        const back = e => { for (; e; e = e.parentElement) { const c = getComputedStyle(e).backgroundColor;
                             if (!c.endsWith(', 0)') && c !== 'transparent') return c; } return 'rgb(255, 255, 255)'; };
        const out = [];
        for (const e of document.querySelectorAll('h1, h2, h3, label, button, p, td, th, .row span, pre')) {
          if (!e.offsetParent || !e.textContent.trim()) continue;
          const r = ratio(rgb(getComputedStyle(e).color), rgb(back(e)));
          if (r < 4.5) out.push(e.tagName + ' ' + e.textContent.trim().slice(0, 20) + ': ' + r.toFixed(2));
        }
        return out;""")
    assert not low, f"contrast under 4.5:1: {low}"


def admin_pages():
    d = browser()
    try:
        sign_in(d, "root", "hunter2")
        # The topic tree, live.
        pub("home/kitchen/temp", "21.5", "-r")
        until(d, lambda: row(d, "home") is not None, "the topic tree's home")
        row(d, "home").click()
        until(d, lambda: row(d, "home/kitchen") is not None, "home/kitchen under home")
        row(d, "home/kitchen").click()
        until(d, lambda: row(d, "home/kitchen/temp") is not None, "home/kitchen/temp")
        row(d, "home/kitchen/temp").click()
        last = lambda: d.find_element(By.ID, "last-value").text
        until(d, lambda: last() == "21.5", "the retained value")
        pub("home/kitchen/temp", "22.0")
        until(d, lambda: last() == "22.0", "the new value without a reload")
        shot(d, "topics")

        # A history chart from recorded data.
        for v in ("10", "12", "11", "15"):
            pub("sensors/attic", v, "-q", "1")
        open_topic(d, "sensors/attic")
        chart = lambda: d.find_element(By.ID, "chart")
        until(d, lambda: chart().get_attribute("data-buckets") is not None, "the history chart")
        assert chart().find_elements(By.TAG_NAME, "canvas"), "the chart draws on a canvas"
        shot(d, "history")

        # Wiring: a webhook added in the form gets the next message;
        # paused, it holds the next one until resumed.
        tab(d, "webhooks")
        d.find_element(By.ID, "wh-name").send_keys("feeder")
        d.find_element(By.ID, "wh-filter").send_keys("garden/#")
        d.find_element(By.ID, "wh-url").send_keys(f"http://127.0.0.1:{HOOK_PORT}/hook")
        d.find_element(By.CSS_SELECTOR, "#webhook-form button[type=submit]").click()
        hook_row = lambda: d.find_element(By.CSS_SELECTOR, 'tr[data-webhook="feeder"]')
        until(d, lambda: d.find_elements(By.CSS_SELECTOR, 'tr[data-webhook="feeder"]'), "the webhook's row")
        # Its subscription is in place once the broker has its session.
        until(d, lambda: subprocess.run(
            ["curl", "-s", "-u", "root:hunter2", URL + "/api/v1/clients/$tern%2Fwebhook%2Ffeeder"],
            capture_output=True, text=True).stdout.count("garden/#") > 0, "the webhook's subscription")
        pub("garden/feeder", "bird", "-q", "1")
        assert got.get(timeout=WAIT) == "bird", "the receiver got the message"
        click(d, lambda: hook_row().find_element(By.CSS_SELECTOR, "button.pause"), "pause")
        until(d, lambda: hook_row().find_element(By.CSS_SELECTOR, ".state").text == "paused", "paused")
        pub("garden/feeder", "second", "-q", "1")
        until(d, lambda: hook_row().find_element(By.CSS_SELECTOR, ".outbox").text == "1", "held in the outbox")
        assert got.empty(), "a paused webhook delivers nothing"
        shot(d, "webhooks")
        click(d, lambda: hook_row().find_element(By.CSS_SELECTOR, "button.pause"), "resume")
        assert got.get(timeout=WAIT) == "second", "resumed, it delivers what it held"

        # Rules: one turned off in the page stops firing.
        tab(d, "rules")
        toggle = lambda: d.find_element(By.CSS_SELECTOR, 'tr[data-rule="echo-a"] input.toggle')
        until(d, lambda: d.find_elements(By.CSS_SELECTOR, 'tr[data-rule="echo-a"] input.toggle'), "the rules")
        click(d, toggle, "echo-a's toggle")
        until(d, lambda: not toggle().is_selected(), "echo-a off")
        sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", MQTT, "-t", "out/#", "-v", "-C", "1"],
                               stdout=subprocess.PIPE, text=True)
        # Its subscription is in place once the broker lists it.
        until(d, lambda: "out/#" in subprocess.run(
            ["curl", "-s", "-u", "root:hunter2", URL + "/api/v1/clients"], capture_output=True, text=True).stdout,
            "mosquitto_sub's subscription")
        pub("bell", "1")
        out, _ = sub.communicate(timeout=WAIT)
        # In order on the rules' one connection: out/a would come first.
        assert out.strip() == "out/b (null)", out
        shot(d, "rules")

        # Keyboard: the tree takes arrows and Enter.
        tab(d, "topics")
        search = d.find_element(By.ID, "search")
        search.clear()
        search.send_keys("home/kitchen")
        until(d, lambda: row(d, "home/kitchen/temp") is not None, "the search")
        tree = d.find_element(By.ID, "tree")
        tree.click()
        tree.send_keys(Keys.ARROW_DOWN)
        tree.send_keys(Keys.ENTER)
        until(d, lambda: d.find_element(By.CSS_SELECTOR, "#detail h2").text == "home/kitchen/temp",
              "a topic opened from the keyboard")
        accessibility(d)

        tab(d, "clients")
        until(d, lambda: d.find_elements(By.CSS_SELECTOR, "#client-rows tr[data-client]"), "the clients")
        shot(d, "clients")
        tab(d, "health")
        until(d, lambda: len(d.find_elements(By.CSS_SELECTOR, "#health-charts canvas")) >= 4, "the health charts")
        shot(d, "health")
    except Exception:
        shot(d, "failed-admin")
        raise
    finally:
        d.quit()


def read_only_pages():
    d = browser()
    try:
        sign_in(d, "bob", "builder")
        open_topic(d, "home/kitchen/temp")
        assert not d.find_element(By.ID, "publish-form").is_displayed(), "no publish form"
        tab(d, "rules")
        until(d, lambda: d.find_elements(By.CSS_SELECTOR, 'tr[data-rule="echo-b"]'), "the rules")
        assert not d.find_elements(By.CSS_SELECTOR, "input.toggle"), "no toggles"
        assert not d.find_element(By.ID, "rules-reload").is_displayed(), "no reload button"
        tab(d, "webhooks")
        assert not d.find_element(By.ID, "webhook-form").is_displayed(), "no webhook form"
        shot(d, "read-only")
        # The API refuses what the page hides, with the session's own token.
        status = d.execute_async_script("""
            const done = arguments[arguments.length - 1];
            fetch('/api/v1/rules/echo-b', {method: 'PATCH', credentials: 'same-origin',
              headers: {'content-type': 'application/json', 'x-csrf-token': me.csrf},
              body: JSON.stringify({enabled: false})}).then(r => done(r.status));""")
        assert status == 403, status
        status = d.execute_async_script("""
            const done = arguments[arguments.length - 1];
            fetch('/api/v1/publish/home/kitchen/temp', {method: 'POST', credentials: 'same-origin',
              headers: {'x-csrf-token': me.csrf}, body: '99'}).then(r => done(r.status));""")
        assert status == 403, status
        # Without the token, even an admin's change would be refused.
        status = d.execute_async_script("""
            const done = arguments[arguments.length - 1];
            fetch('/api/v1/rules/reload', {method: 'POST', credentials: 'same-origin'})
              .then(r => done(r.status));""")
        assert status == 403, status
    except Exception:
        shot(d, "failed-read-only")
        print(d.execute_script("return document.body.innerText"))
        raise
    finally:
        d.quit()


admin_pages()
read_only_pages()
print("dashboard ok")
