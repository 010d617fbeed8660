// The kiosk screen: follows the worker's state (GET /api/state, polled) and
// sends what the citizen chooses. Amounts are integer fen on the wire; the
// yuan typed on the keypad are converted with integer arithmetic only.
"use strict";

const POLL_MS = 300;
const ACCOUNT_CHARS_MAX = 24;
const PIN_DIGITS_MAX = 12;
const RECENT_ROWS = 5;

let server = null;       // the last state from the worker
let view = "home";       // what the card page shows: home, topup, utility, account, amount, pin, receipt
let bill = { utility: null, account: "", amount: "" };
let pin = "";

const $ = (selector) => document.querySelector(selector);
const $$ = (selector) => Array.from(document.querySelectorAll(selector));

function yuan(fen) {
  return Math.floor(fen / 100) + "." + String(fen % 100).padStart(2, "0");
}

// "12.5" -> 1250; null if not a yuan amount with at most two decimals.
function fenOf(text) {
  if (!/^\d{1,5}(\.\d{0,2})?$/.test(text)) return null;
  const [whole, fraction = ""] = text.split(".");
  return parseInt(whole, 10) * 100 + parseInt((fraction + "00").slice(0, 2), 10);
}

const UTILITIES = { water: ["水费", "Water"], electricity: ["电费", "Electricity"], gas: ["燃气费", "Gas"] };
const KINDS = { load: ["充值", "Top-up", "+"], purchase: ["消费", "Payment", "−"], transit: ["乘车", "Transit", "−"] };

function resetEntries() {
  bill = { utility: null, account: "", amount: "" };
  pin = "";
}

function apply(state) {
  if (server && state.version === server.version) return;
  const before = server;
  server = state;
  if (state.phase === "idle" || state.phase === "reading") {
    view = "home";
    resetEntries();
  }
  const receipt = JSON.stringify(state.receipt);
  if (state.receipt && receipt !== JSON.stringify(before && before.receipt)) view = "receipt";
  if (!state.receipt && view === "receipt") view = "home";
  render();
}

function show(id) {
  $$("main > .view").forEach((section) => { section.hidden = section.id !== id; });
}

function render() {
  if (!server) return;
  const message = server.message;
  const banner = $("#message");
  banner.hidden = !message;
  if (message) {
    banner.className = "message " + message.tone;
    banner.dataset.code = message.code;
    banner.querySelector(".zh").textContent = message.zh;
    banner.querySelector(".en").textContent = message.en;
  }
  $("#busy").hidden = server.phase !== "busy";
  if (server.phase === "idle") return show("view-idle");
  if (server.phase === "reading") return show("view-reading");
  const card = server.card;
  if (!card) return show("view-refused");
  renderCard(card);
  if (view === "receipt" && server.receipt) {
    $("#receipt").textContent = server.receipt.lines.join("\n");
  }
  const utility = UTILITIES[bill.utility] || ["", ""];
  $$(".utility-name").forEach((node) => { node.textContent = utility[0] + " " + utility[1]; });
  $$(".account-echo").forEach((node) => { node.textContent = bill.account; });
  $("#account-display").textContent = bill.account;
  $("#amount-display").textContent = bill.amount;
  $("#amount-pay").disabled = !fenOf(bill.amount);
  $("#account-next").disabled = bill.account.length === 0;
  $("#pin-display").textContent = "●".repeat(pin.length);
  $("#pin-ok").disabled = pin.length < 4;
  show("view-" + view);
}

function renderCard(card) {
  $("#card-type-zh").textContent = card.card_type_zh;
  $("#card-type-en").textContent = card.card_type_en;
  $("#card-number").textContent = card.card;
  $("#card-name").textContent = card.name || "";
  $("#card-name").hidden = !card.name;
  $("#show-name").hidden = !!card.name;
  $("#balance").textContent = yuan(card.balance_fen);
  $("#show-topup").disabled = !card.money_allowed;
  $("#show-bill").disabled = !card.money_allowed;
  const body = $("#recent tbody");
  body.replaceChildren();
  if (card.recent.length === 0) {
    const row = body.insertRow();
    const cell = row.insertCell();
    cell.className = "none";
    cell.textContent = "暂无交易 No transactions yet";
  }
  for (const record of card.recent.slice(0, RECENT_ROWS)) {
    const [zh, en, sign] = KINDS[record.kind] || [record.kind, record.kind, ""];
    const row = body.insertRow();
    row.insertCell().textContent = zh + " " + en;
    const amount = row.insertCell();
    amount.className = "amount " + record.kind;
    amount.textContent = sign + "¥" + yuan(record.amount_fen);
    const at = row.insertCell();
    at.className = "at";
    at.textContent = record.at;
  }
  const amounts = $("#topup-amounts");
  const wanted = server.topup_amounts_fen.join(",");
  if (amounts.dataset.amounts !== wanted) {
    amounts.dataset.amounts = wanted;
    amounts.replaceChildren(...server.topup_amounts_fen.map((fen) => {
      const button = document.createElement("button");
      button.type = "button";
      button.id = "topup-" + fen;
      button.innerHTML = '<span class="zh"></span><span class="en"></span>';
      button.querySelector(".zh").textContent = "¥" + yuan(fen).replace(/\.00$/, "");
      button.querySelector(".en").textContent = yuan(fen) + " yuan";
      button.addEventListener("click", () => send("/api/topup", { amount_fen: fen }));
      return button;
    }));
  }
}

async function send(path, body) {
  try {
    const response = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    if (response.ok) {
      const state = await response.json();
      view = state.receipt ? "receipt" : "home";
      server = null; // redraw whatever the version
      apply(state);
    } else {
      view = "home";
      render();
    }
  } catch (error) {
    view = "home";
    render();
  }
}

async function poll() {
  try {
    const response = await fetch("/api/state", { cache: "no-store" });
    if (response.ok) apply(await response.json());
  } catch (error) {
    // the terminal is restarting: keep the last screen and try again
  }
  setTimeout(poll, POLL_MS);
}

function pad(container, keys, press) {
  for (const key of keys) {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.key = key;
    button.textContent = key === "back" ? "⌫" : key === "clear" ? "C" : key;
    if (key === "back" || key === "clear") button.className = "fn";
    button.addEventListener("click", () => { press(key); render(); });
    container.appendChild(button);
  }
}

function edit(text, key, allowed, max) {
  if (key === "back") return text.slice(0, -1);
  if (key === "clear") return "";
  return allowed(text + key) && text.length < max ? text + key : text;
}

function go(next) {
  view = next;
  render();
}

function setUp() {
  const digits = ["1", "2", "3", "4", "5", "6", "7", "8", "9"];
  pad($("#account-pad"), [...digits, "-", "0", "back"], (key) => {
    bill.account = edit(bill.account, key, (text) => /^[0-9-]*$/.test(text), ACCOUNT_CHARS_MAX);
  });
  pad($("#amount-pad"), [...digits, ".", "0", "back"], (key) => {
    bill.amount = edit(bill.amount, key, (text) => /^\d{1,5}(\.\d{0,2})?$/.test(text) && !/^0\d/.test(text), 8);
  });
  pad($("#pin-pad"), [...digits, "clear", "0", "back"], (key) => {
    pin = edit(pin, key, (text) => /^\d*$/.test(text), PIN_DIGITS_MAX);
  });
  $("#show-topup").addEventListener("click", () => go("topup"));
  $("#show-bill").addEventListener("click", () => { resetEntries(); go("utility"); });
  $("#show-name").addEventListener("click", () => { pin = ""; go("pin"); });
  $$("[data-utility]").forEach((button) => button.addEventListener("click", () => {
    bill.utility = button.dataset.utility;
    go("account");
  }));
  $("#account-next").addEventListener("click", () => { if (bill.account) go("amount"); });
  $("#amount-pay").addEventListener("click", () => {
    const fen = fenOf(bill.amount);
    if (fen) send("/api/bill", { utility: bill.utility, account: bill.account, amount_fen: fen });
  });
  $("#pin-ok").addEventListener("click", () => {
    const entered = pin;
    pin = "";
    send("/api/name", { pin: entered });
  });
  $("#receipt-done").addEventListener("click", () => send("/api/dismiss", {}));
  const previous = { account: "utility", amount: "account" };
  $$(".back").forEach((button) => button.addEventListener("click", () => go(previous[view] || "home")));
  const clock = () => {
    const now = new Date();
    $("#clock").textContent = String(now.getHours()).padStart(2, "0") + ":" + String(now.getMinutes()).padStart(2, "0");
  };
  clock();
  setInterval(clock, 10000);
  poll();
}

setUp();
