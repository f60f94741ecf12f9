"""Server-rendered HTML of the rating app: no template engine, no build step, no external asset.

Keyboard: ``1`` relevant, ``2`` partly, ``3`` not (then the next unrated result gets the focus);
``j``/``k`` or the down/up arrows move between results; ``n``/``p`` or the right/left arrows move
between queries. Everything can also be done with the mouse.
"""

from __future__ import annotations

import html
import json

from vsearch.evaluation.ratings import GRADE_COLOURS, LABELS, UNRATED_COLOUR
from vsearch.evaluation.task import Query, RatingTask, Result


def grade_legend() -> str:
    """The grade scale's colours as inline HTML swatches (both the rating page and the report)."""
    swatch = '<span style="display:inline-block;width:.9em;height:.9em;border:3px solid {}"></span>'
    items = [(GRADE_COLOURS[g], LABELS[g]) for g in sorted(LABELS, reverse=True)]
    return ", ".join(
        f"{swatch.format(c)} {html.escape(label)}"
        for c, label in [*items, (UNRATED_COLOUR, "unrated")]
    )


# The grade scale's colours (ratings.GRADE_COLOURS) and nothing else in green, amber or red: a
# rated card's border and its grade's button; an unrated card is grey, the focus blue.
_GRADE_STYLE = "".join(
    f'.card.g{g}{{border:4px solid {c}}} button[data-label="{LABELS[g]}"]{{border:2px solid {c}}}'
    for g, c in GRADE_COLOURS.items()
)

_STYLE = (
    """
body{font-family:sans-serif;margin:1em 2em;background:#fafafa}
header{display:flex;gap:2em;align-items:baseline}
.progress{font-weight:bold} .bar{height:8px;background:#ddd;width:400px}.bar>div{height:8px;background:#1565c0}
main{display:flex;gap:2em;align-items:flex-start} .query img{width:320px;height:320px;border:4px solid #000}
.lists{display:flex;gap:2em} .list{display:flex;flex-wrap:wrap;gap:8px;max-width:760px;align-content:flex-start}
.card{width:170px;border:4px solid UNRATED;background:#fff;padding:4px;font-size:12px}
.card img{width:160px;height:160px;display:block} .card.cur{outline:4px solid #1565c0}
.card button{font-size:11px;padding:2px 4px} .missing{width:160px;height:160px;display:flex;
align-items:center;justify-content:center;background:#eee;color:#444;text-align:center}
.error{background:#fdecea;border:2px solid #c62828;padding:1em;max-width:60em} #status{color:#c62828;min-height:1.2em}
""".replace("UNRATED", UNRATED_COLOUR)
    + _GRADE_STYLE
)

_SCRIPT = """
const cards=[...document.querySelectorAll('.card')];
let cur=Math.max(0,cards.findIndex(c=>!c.dataset.grade));
function focusCard(i){if(!cards.length)return;cur=(i+cards.length)%cards.length;
 cards.forEach(c=>c.classList.remove('cur'));cards[cur].classList.add('cur');
 cards[cur].scrollIntoView({block:'nearest'});}
function nextUnrated(from){
 for(let j=1;j<=cards.length;j++){const c=cards[(from+j)%cards.length];
  if(!c.dataset.grade&&!c.dataset.pending)return (from+j)%cards.length;}
 return -1;}
async function rate(card,label){
 // Move on at once (keys may come faster than the server answers); the card turns its
 // colour only when the server has stored the rating.
 const at=cards.indexOf(card);card.dataset.pending='1';
 const next=nextUnrated(at);
 if(next>=0)focusCard(next);
 const body={rater:RATER,query_id:QUERY,listing_id:card.dataset.listing,label:label};
 const status=document.getElementById('status');
 let r,d;
 try{r=await fetch('/api/rate',{method:'POST',headers:{'Content-Type':'application/json'},body:JSON.stringify(body)});d=await r.json();}
 catch(e){delete card.dataset.pending;status.textContent='not saved: the server cannot be reached';return;}
 delete card.dataset.pending;
 if(!r.ok){status.textContent='not saved: '+d.error;return;}
 for(const c of cards){if(c.dataset.listing===card.dataset.listing){c.dataset.grade=d.grade;
  c.classList.remove('g0','g1','g2');c.classList.add('g'+d.grade);}}
 // Answers may arrive out of order (the server stores ratings in parallel), and a rater's count
 // only grows: an older answer's smaller count must not move the progress back.
 const shown=document.getElementById('rated'),rated=Math.max(d.rated,+shown.textContent||0);
 shown.textContent=rated;
 document.getElementById('barfill').style.width=(100*rated/d.total)+'%';
 status.textContent=cards.every(c=>c.dataset.grade)?'query done: press n for the next one':'';
}
cards.forEach((c,i)=>{c.addEventListener('click',()=>focusCard(i));
 c.querySelectorAll('button').forEach(b=>b.addEventListener('click',e=>{e.stopPropagation();focusCard(i);rate(c,b.dataset.label);}));});
document.addEventListener('keydown',e=>{
 if(e.ctrlKey||e.metaKey||e.altKey)return;
 const k=e.key;
 if(k==='1')rate(cards[cur],'relevant');else if(k==='2')rate(cards[cur],'partly');
 else if(k==='3')rate(cards[cur],'not');
 else if(k==='j'||k==='ArrowDown')focusCard(cur+1);else if(k==='k'||k==='ArrowUp')focusCard(cur-1);
 else if((k==='n'||k==='ArrowRight')&&NEXT)location.href=NEXT;
 else if((k==='p'||k==='ArrowLeft')&&PREV)location.href=PREV;
 else return;
 e.preventDefault();});
focusCard(cur);
"""


def _page(title: str, body: str, script: str = "") -> str:
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>{body}"
        + (f"<script>{script}</script>" if script else "")
        + "</body></html>"
    )


def error_page(message: str) -> str:
    return _page(
        "vsearch rate: error",
        f'<h1>Cannot show this rating task</h1><p class="error" id="error">{html.escape(message)}</p>'
        "<p>Fix the task file (or write a new one with <code>vsearch eval-sample</code>) "
        "and reload this page.</p>",
    )


def rater_form(task: RatingTask, problem: str = "") -> str:
    """The name form; ``problem`` says why the name given was refused."""
    error = f'<p class="error" id="error">{html.escape(problem)}</p>' if problem else ""
    return _page(
        "vsearch rate",
        f"<h1>Rate search results: {html.escape(task.task_id)}</h1>{error}"
        f"<p>{len(task.queries)} query photos, {task.total_results()} results to rate.</p>"
        '<form method="get" action="/"><label>Your name (ratings are kept per rater): '
        '<input name="rater" id="rater" pattern="[A-Za-z0-9][A-Za-z0-9_.-]{0,39}" required></label> '
        '<button type="submit">Start</button></form>',
    )


def _img(image_id: int | None, alt: str) -> str:
    missing = '<div class="missing">image missing</div>'
    if image_id is None:
        return missing
    # A photo that cannot be served turns into a visible "image missing" box, never a broken icon.
    return (
        f'<img src="/img/{image_id}" alt="{html.escape(alt)}" '
        f"onerror=\"this.outerHTML='<div class=&quot;missing&quot;>image missing</div>'\">"
    )


def _card(r: Result, image_id: int | None, grade: int | None) -> str:
    buttons = "".join(
        f'<button data-label="{LABELS[g]}" title="key {3 - g}">{3 - g} {LABELS[g]}</button>'
        for g in (2, 1, 0)
    )
    cls = f"card g{grade}" if grade is not None else "card"
    data_grade = f' data-grade="{grade}"' if grade is not None else ""
    return (
        f'<div class="{cls}" data-listing="{html.escape(r.listing_id)}"{data_grade}>'
        f"{_img(image_id, 'result photo')}<div>{buttons}</div></div>"
    )


def query_page(
    task: RatingTask,
    index: int,
    rater: str,
    image_ids: dict[str, int],
    grades: dict[str, int],
    rated: int,
) -> str:
    """One query: its photo beside its result list(s); side by side the lists are unnamed."""
    q: Query = task.queries[index]
    total = task.total_results()
    versions = q.sides or task.models
    lists = []
    for side, version in enumerate(versions):
        cards = "".join(
            _card(r, image_ids.get(r.image_uri), grades.get(r.listing_id))
            for r in q.results[version][: task.k]
        )
        name = f"<h3>List {'AB'[side]}</h3>" if len(versions) == 2 else ""
        lists.append(f'<section>{name}<div class="list">{cards}</div></section>')
    prev_href = f"/q/{index - 1}" if index > 0 else ""
    next_href = f"/q/{index + 1}" if index + 1 < len(task.queries) else ""
    nav = (f'<a href="{prev_href}">&larr; previous</a> ' if prev_href else "") + (
        f'<a href="{next_href}">next &rarr;</a>' if next_href else "<b>last query</b>"
    )
    body = f"""
<header><h2>Query {index + 1} / {len(task.queries)}</h2>
<span class="progress">{html.escape(rater)}: <span id="rated">{rated}</span> / {total} results rated</span>
<div class="bar"><div id="barfill" style="width:{100 * rated / max(1, total):.1f}%"></div></div>
<span>{nav}</span></header>
<p>Is each result what a shopper searching with this photo wants? <b>1</b> relevant, <b>2</b> partly,
<b>3</b> not; <b>j/k</b> or arrows move; <b>n/p</b> next/previous query. Saved as you go.
Border: {grade_legend()}.</p>
<div id="status"></div>
<main><div class="query">{_img(image_ids.get(q.image_uri), "query photo")}
<p>{html.escape(q.kind)} photo</p></div>
<div class="lists">{"".join(lists)}</div></main>"""
    script = (
        f"const RATER={json.dumps(rater)},QUERY={json.dumps(q.query_id)},"
        f"PREV={json.dumps(prev_href)},NEXT={json.dumps(next_href)};" + _SCRIPT
    )
    return _page(f"rate {index + 1}/{len(task.queries)}", body, script)


def done_page(task: RatingTask, rater: str) -> str:
    return _page(
        "vsearch rate: done",
        f"<h1>All {task.total_results()} results rated, {html.escape(rater)}. Thank you.</h1>"
        '<p><a href="/q/0">Review your ratings</a>. Then run <code>vsearch eval-report</code>.</p>',
    )
