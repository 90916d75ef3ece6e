"""Generate the ``news_topics`` toy dataset used by the nlpkit quickstart recipe.

What the data is
----------------
Short, synthetic, English news-headline-like sentences (5 to 20 words), each
labelled with one of four topics: ``sports``, ``business``, ``science`` and
``world``.  Nothing is scraped or copied from real news: every sentence is
assembled by this script from hand-written templates (about 40 per class)
whose slots are filled from small word lists (invented people, invented
companies and clubs, real city and country names, numbers, verbs, ...).
All names of people, clubs and companies are made up.

How it was made
---------------
* Many templates per class, with varied slot fillers, so sentences differ a lot.
* Vocabulary is deliberately shared between classes: people, places, numbers,
  and words such as "record", "deal", "report", "team", "talks", "launch",
  "strike", "trial", "star" or "crisis" appear under several topics, so a
  classifier has to combine words rather than rely on a single keyword.
* Harder examples mix the vocabulary of two topics, in three ways: about ten
  templates per class are cross-topic by design (a company buying TV rights
  to a league, scientists studying athletes' injuries, ...); 30% of template
  sentences get a short clause borrowed from another topic ("... as Chile
  election nears"); and 10% of sentences are a short main clause followed by
  a longer clause from another topic ("Orbis Bank shares slide as Lyon Hawks
  beat Oslo Rovers 2-1 in the rugby final").  The label always follows the main
  (first) clause.  Labels are never randomly flipped: they are clean.
* Sentences are de-duplicated (case-insensitively) before splitting, so the
  validation and test splits share no sentence with the training split or with
  each other.  Every split is exactly balanced across the four classes.

The generator uses only the Python standard library and a fixed seed, so
running it again reproduces the checked-in ``train.csv``, ``validation.csv``
and ``test.csv`` byte for byte.  The CSV files are committed to the repository
so the recipe does not need to run this script; it is kept to document and
reproduce the data.

Usage::

    python recipes/data/news_topics/make_dataset.py            # writes next to this file
    python recipes/data/news_topics/make_dataset.py --out DIR  # writes into DIR
"""

from __future__ import annotations

import argparse
import csv
import random
import re
from pathlib import Path

SEED = 20240517
LABELS = ("sports", "business", "science", "world")
SPLIT_SIZES = {"train": 750, "validation": 125, "test": 125}  # rows per class
MIN_WORDS, MAX_WORDS = 5, 20
MIX_PROB = 0.30  # share of template sentences that get a clause borrowed from another topic
HARD_PROB = 0.10  # share of sentences built as short main clause + longer clause from another topic

# --------------------------------------------------------------------------
# Shared fillers (used by every class)
# --------------------------------------------------------------------------
FIRST = """Ana Ben Carla Dmitri Elena Farid Grace Hugo Ines Jonas Keiko Liam Maya
Nadia Omar Priya Quinn Rosa Samir Tomas Uma Viktor Wen Xavier Yara Zoe Aisha
Bruno Chloe Diego Emeka Freya Goran Hana Ivan Julia Kofi Lena Mateo Nina""".split()
LAST = """Adler Barros Castell Duval Eriksen Fontaine Garcia Haddad Ivanova Jensen
Kowalski Lindqvist Moreau Nakamura Okafor Petrov Quintero Rossi Sandoval Tanaka
Ulrich Varga Weber Xu Yilmaz Zhang Mensah Novak Ortega Brennan Carvalho Dubois
Farrell Hoffmann Kaur Mbeki Nilsen Patel Sato""".split()
CITY = """London Paris Berlin Madrid Rome Lisbon Vienna Prague Warsaw Athens Cairo
Lagos Nairobi Johannesburg Mumbai Delhi Tokyo Seoul Jakarta Manila Sydney
Melbourne Toronto Chicago Boston Denver Austin Seattle Lima Bogota Santiago
Istanbul Dubai Oslo Helsinki Dublin Glasgow Lyon Milan Osaka""".split()
COUNTRY = """France Germany Spain Italy Portugal Poland Greece Egypt Nigeria Kenya
Brazil Argentina Chile Peru Colombia Mexico Canada Japan India Indonesia
Australia Turkey Norway Sweden Finland Ireland Ghana Vietnam Thailand Morocco
Ukraine Pakistan Ethiopia Senegal Malaysia""".split()
DAY = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
MONTH = """January February March April May June July August September October
November December""".split()
ADJ = ["major", "new", "surprise", "historic", "key", "landmark", "fresh",
       "controversial", "long-awaited", "rare", "unexpected"]

# --------------------------------------------------------------------------
# Sports fillers (club and player names are invented)
# --------------------------------------------------------------------------
MASCOT = """United Rovers Hawks Lions Rangers Tigers Wanderers Falcons Athletic
Warriors Comets Giants Wolves Sharks Royals Dynamo""".split()
SPORT = ["football", "tennis", "rugby", "cricket", "basketball", "hockey",
         "cycling", "golf", "athletics", "boxing", "volleyball", "baseball",
         "handball", "swimming"]
SPORT_EVENT = ["final", "semifinal", "derby", "cup tie", "title decider",
               "playoff", "league opener", "quarterfinal", "grand prix",
               "world cup qualifier", "season opener", "championship match"]
RECORD_EVENT = ["100m", "400m", "marathon", "pole vault", "high jump",
                "100m freestyle", "hammer throw", "1500m", "long jump",
                "200m butterfly"]
RELAY = ["4x100m relay", "4x400m relay", "swimming relay", "team pursuit",
         "mixed relay"]
PLAYER = ["striker", "goalkeeper", "captain", "midfielder", "winger",
          "sprinter", "forward", "defender", "playmaker", "all-rounder",
          "fly-half", "point guard"]
BEAT = ["beat", "edge past", "thrash", "stun", "crush", "overcome", "hold off",
        "knock out", "outclass", "rally past", "see off", "upset"]
MEDAL = ["gold", "silver", "bronze"]
SPORT_NOUN = ["hat-trick", "comeback", "late winner", "clean sheet",
              "penalty shootout win", "late equaliser", "stunning volley",
              "injury-time winner", "last-gasp try", "shock upset"]
COACH = ["coach", "manager", "head coach", "trainer", "assistant coach"]

# --------------------------------------------------------------------------
# Business fillers (company names are invented)
# --------------------------------------------------------------------------
CO_PRE = """Norcast Brightline Valemont Orbis Kestrel Halden Meridian Copperleaf
Arcadia Tessaro Pinegate Quantro Lumen Redwater Silverpeak Northwind Bluestone
Vexa Corvan Altamira Greyfield Solenne Marlow Tidewell""".split()
CO_SUF = ["Holdings", "Group", "Corp", "Industries", "Bank", "Motors", "Foods",
          "Airlines", "Energy", "Retail", "Telecom", "Capital", "Pharma",
          "Logistics", "Systems", "Insurance"]
METRIC = ["profit", "revenue", "sales", "earnings", "quarterly profit",
          "net income", "operating margin", "annual turnover", "dividend"]
SECTOR = ["retail", "banking", "airline", "shipping", "carmaking", "steel",
          "chipmaking", "housing", "insurance", "telecoms", "mining", "tourism"]
MARKET = ["stocks", "shares", "bond yields", "oil prices", "gold prices",
          "copper prices", "tech stocks", "bank shares", "European stocks",
          "Asian markets"]
EXEC = ["chief executive", "CEO", "finance chief", "chairman", "founder",
        "chief operating officer"]
MONEY_ACTORS = ["investors", "shareholders", "analysts", "traders", "regulators",
                "creditors", "economists"]
UP = ["rise", "jump", "climb", "surge", "rebound", "edge higher"]
DOWN = ["fall", "slump", "slide", "dip", "tumble", "edge lower"]
PRODUCT = ["electric van", "budget smartphone", "payment app", "cloud service",
           "frozen meal range", "loyalty scheme", "streaming bundle",
           "home battery", "credit card", "delivery service"]

# --------------------------------------------------------------------------
# Science fillers
# --------------------------------------------------------------------------
SCIENTISTS = ["researchers", "scientists", "astronomers", "biologists",
              "physicists", "chemists", "geologists", "ecologists",
              "neuroscientists", "engineers", "palaeontologists",
              "marine biologists"]
FIELD = ["genetics", "astronomy", "physics", "climate science", "neuroscience",
         "ecology", "chemistry", "palaeontology", "materials science",
         "epidemiology", "oceanography", "quantum computing"]
SPACE_OBJ = ["exoplanet", "black hole", "comet", "asteroid", "galaxy",
             "neutron star", "brown dwarf", "ice moon", "dwarf planet",
             "star cluster"]
ORGANISM = ["bacterium", "virus strain", "coral species", "deep-sea fish",
            "frog species", "moth species", "soil fungus", "octopus species",
            "songbird species", "plankton species"]
MOLECULE = ["gene", "protein", "enzyme", "antibody", "brain cell type",
            "hormone", "gut microbe"]
FOSSIL = ["dinosaur", "giant penguin", "early whale", "flying reptile",
          "sabre-toothed cat", "armoured fish"]
SCI_ADJ = ["rare", "unusual", "distant", "ancient", "giant", "tiny",
           "previously unknown", "unexpected", "strange", "new"]
SPACECRAFT = ["space telescope", "space probe", "satellite", "lunar lander",
              "solar observatory", "radio telescope"]
LAB_TOOL = ["electron microscope", "gene sequencer", "mass spectrometer",
            "supercomputer", "laser microscope"]
GEO_TOOL = ["seismic sensors", "ground radar", "drilling probes",
            "satellite radar", "deep-sea robots"]
DETECTOR = ["particle detector", "underground detector", "particle collider",
            "radio telescope array", "neutrino observatory"]
FIND = ["discover", "identify", "map", "observe", "detect", "measure",
        "uncover", "image", "describe", "characterise"]
EARTH_PHENOM = ["ocean warming", "glacier melt", "sea level rise",
                "permafrost thaw", "coral bleaching", "drought cycles",
                "bee decline", "bird migration", "soil erosion", "monsoon shifts"]
SPACE_PHENOM = ["dark matter", "gravitational waves", "solar flares",
                "cosmic rays", "star formation", "dark energy"]
BIO_PHENOM = ["antibiotic resistance", "sleep loss", "memory formation",
              "cell ageing", "muscle fatigue", "chronic inflammation",
              "hearing loss"]
UNDERGROUND = ["magma chambers", "groundwater", "fault lines", "buried ice",
               "ancient river beds"]
MATERIAL = ["graphene", "a new alloy", "a ceramic film", "a plant protein",
            "a synthetic enzyme", "a quantum dot", "a polymer gel",
            "a lithium compound"]
TREATMENT = ["a new antibody", "a gut microbe", "a modified enzyme",
             "a cheap generic drug", "a gene therapy", "an experimental vaccine"]

# --------------------------------------------------------------------------
# World-affairs fillers
# --------------------------------------------------------------------------
TITLE = ["president", "prime minister", "foreign minister", "defence minister",
         "opposition leader", "interior minister", "ambassador", "UN envoy",
         "finance minister", "senator"]
LEADER = TITLE + ["parliament", "government", "ruling party", "king"]
POLITICAL = ["election", "ceasefire", "referendum", "coup attempt",
             "crackdown", "military exercise", "border closure",
             "general strike", "peace talks", "troop build-up"]
VOTE = ["election", "referendum", "presidential runoff", "snap election",
        "leadership contest"]
ELECTION = ["election", "presidential runoff", "snap election",
            "leadership contest"]
MEETING = ["summit", "peace talks", "state visit", "trade talks",
           "climate conference", "security conference"]
MEASURE = ["curfew", "state of emergency", "troop deployment",
           "border closure", "martial law"]
DISASTER = ["floods", "earthquake", "wildfire", "cyclone", "landslide",
            "drought", "heatwave", "volcanic eruption"]
WORLD_ORG = ["United Nations", "European Union", "NATO", "African Union",
             "Red Cross", "Security Council", "Arab League", "ASEAN",
             "World Food Programme"]
WORLD_VERB = ["condemns", "rejects", "calls for", "criticises", "welcomes",
              "warns against", "backs", "questions"]
MARCHERS = ["protesters", "students", "farmers", "teachers", "pensioners",
            "voters", "nurses", "workers"]
CIVILIANS = ["refugees", "civilians", "families", "villagers", "migrants",
             "residents"]
ARMED = ["rebels", "troops", "militias", "rival factions", "police and protesters",
         "border guards"]


def money(r: random.Random) -> str:
    cur = r.choice(["$", "€", "£"])
    if r.random() < 0.7:
        return f"{cur}{r.randint(2, 950)} million"
    return f"{cur}{r.randint(1, 60)} billion"


def fee(r: random.Random) -> str:
    return f"{r.choice(['$', '€', '£'])}{r.randint(3, 120)} million"


def score(r: random.Random) -> str:
    a = r.randint(1, 5)
    return f"{a}-{r.randint(0, a - 1)}"


def draw(r: random.Random) -> str:
    a = r.randint(0, 4)
    return f"{a}-{a}"


def ordinal(r: random.Random) -> str:
    n = r.randint(2, 45)
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def choice(values):
    return lambda r: r.choice(values)


def institute(r: random.Random) -> str:
    c = r.choice(CITY)
    return r.choice([f"University of {c}", f"{c} Institute of Technology",
                     f"the {c} Observatory", f"{c} Medical School",
                     f"the {c} Science Centre"])


FILLERS = {
    # shared
    "person": lambda r: f"{r.choice(FIRST)} {r.choice(LAST)}",
    "city": choice(CITY), "country": choice(COUNTRY), "day": choice(DAY),
    "month": choice(MONTH), "adj": choice(ADJ),
    "num": lambda r: str(r.randint(2, 60)), "few": lambda r: str(r.randint(2, 12)),
    "pct": lambda r: f"{r.randint(1, 40)} percent",
    "share": lambda r: f"{r.randint(41, 78)} percent", "money": money,
    "year": lambda r: str(r.randint(1965, 2015)),
    "future": lambda r: str(r.randrange(2030, 2101, 10)),
    # sports
    "team": lambda r: f"{r.choice(CITY)} {r.choice(MASCOT)}",
    "sport": choice(SPORT), "event": choice(SPORT_EVENT),
    "recevent": choice(RECORD_EVENT), "relay": choice(RELAY),
    "player": choice(PLAYER), "beat": choice(BEAT), "medal": choice(MEDAL),
    "score": score, "draw": draw, "ordinal": ordinal, "fee": fee,
    "snoun": choice(SPORT_NOUN), "coach": choice(COACH),
    # business
    "company": lambda r: f"{r.choice(CO_PRE)} {r.choice(CO_SUF)}",
    "brand": choice(CO_PRE), "metric": choice(METRIC), "sector": choice(SECTOR),
    "market": choice(MARKET), "exec": choice(EXEC), "actors": choice(MONEY_ACTORS),
    "up": choice(UP), "down": choice(DOWN), "product": choice(PRODUCT),
    # science
    "scientists": choice(SCIENTISTS), "field": choice(FIELD),
    "space": choice(SPACE_OBJ), "organism": choice(ORGANISM),
    "molecule": choice(MOLECULE), "fossil": choice(FOSSIL),
    "obj": choice(SPACE_OBJ + ORGANISM + MOLECULE), "sadj": choice(SCI_ADJ),
    "spacecraft": choice(SPACECRAFT), "lab": choice(LAB_TOOL),
    "geotool": choice(GEO_TOOL), "detector": choice(DETECTOR), "find": choice(FIND),
    "earth": choice(EARTH_PHENOM), "cosmic": choice(SPACE_PHENOM),
    "bio": choice(BIO_PHENOM), "phenom": choice(EARTH_PHENOM + SPACE_PHENOM + BIO_PHENOM),
    "underground": choice(UNDERGROUND), "material": choice(MATERIAL),
    "treatment": choice(TREATMENT), "institute": institute,
    # world
    "title": choice(TITLE), "leader": choice(LEADER), "political": choice(POLITICAL),
    "vote": choice(VOTE), "election": choice(ELECTION), "meeting": choice(MEETING), "measure": choice(MEASURE),
    "disaster": choice(DISASTER), "org": choice(WORLD_ORG), "wverb": choice(WORLD_VERB),
    "marchers": choice(MARCHERS), "civilians": choice(CIVILIANS), "armed": choice(ARMED),
}

# --------------------------------------------------------------------------
# Templates.  A slot may carry a digit suffix ({team2}) to draw a second,
# distinct value of the same kind.  The last few templates of each class are
# cross-topic on purpose: they borrow vocabulary from another class while the
# main topic (and the label) stays the same.
# --------------------------------------------------------------------------
TEMPLATES = {
    "sports": [
        "{team} {beat} {team2} {score} in the {event}",
        "{person} scores twice as {team} {beat} {team2}",
        "{team} sign {player} {person} in {fee} deal",
        "{person} breaks {recevent} world record in {city}",
        "{team} {coach} {person} sacked after {few} games without a win",
        "{country} win {medal} in the {relay} on {day}",
        "{person} wins {medal} for {country} at the {sport} championships",
        "{player} {person} ruled out for {few} weeks with hamstring injury",
        "{team} extend winning streak to {few} matches",
        "Late {snoun} sends {team} into the {event}",
        "{person} seals {snoun} to keep {team} in the title race",
        "{team} and {team2} draw {draw} in rain-soaked {event}",
        "{country} name {person} as new {sport} captain",
        "Injury-hit {team} slump to home defeat against {team2}",
        "{person} retires from {sport} after {few} seasons",
        "{team} fans celebrate first league title since {year}",
        "{person} reaches {city} Open final after marathon tie-break",
        "{team} confirm talks with {player} {person} over new contract",
        "{country} squad announced for {sport} world cup in {city}",
        "Record crowd watches {team} {beat} {team2} at home",
        "{person} named player of the season after {num} goals",
        "{coach} {person} praises team spirit after {snoun}",
        "{person} sets personal best to win {city} marathon",
        "Referee row overshadows {team} win over {team2}",
        "{team} owner promises new stadium for the {sport} club",
        "{person} claims {ordinal} career title with {score} victory",
        "{team} {player} banned for {few} matches after red card",
        "{country} reach {sport} {event} with {snoun} against {country2}",
        "Transfer deadline: {team} agree fee for {player} {person}",
        "{team} complete {snoun} to stun leaders {team2}",
        "{team} in crisis after {few} straight defeats",
        "{team} offer trial to {player} {person}",
        # cross-topic, but the main topic is sport
        "{team} sign shirt deal with {company} as they chase promotion",
        "{team} {coach} blames {city} heatwave for heavy defeat",
        "{person} wins {medal} days after {country} election chaos",
        "{team} {coach} says {company} takeover will not distract the players",
        "{player} {person} donates {medal} medal to {country} {disaster} appeal",
        "{team} {beat} {team2} as {marchers} protest outside the stadium",
        "{person} wins {city} marathon in record heat as {earth} worries grow",
        "{team} {beat} {team2} despite {country} {political} disruption",
        "{player} {person} misses {event} to vote in {country} {vote}",
        "Sprinter {person} breaks record in {city} wearing {brand} shoes",
    ],
    "business": [
        "{company} shares {up} after {metric} beats forecasts",
        "{company} shares {down} as {metric} misses expectations",
        "{company} to cut {few},000 jobs in {sector} restructuring",
        "{company} agrees {money} deal to buy {company2}",
        "{company} {exec} {person} steps down after {few} years",
        "{market} {up} as {actors} bet on rate cuts",
        "{market} {down} on fears of slowing {country} economy",
        "{company} reports record {metric} of {money}",
        "{country} central bank raises interest rates to {pct}",
        "Inflation in {country} eases to {pct} in {month}",
        "{company} launches {product} to win younger customers",
        "{actors} push {company} to sell its {sector} unit",
        "{company} in merger talks with {company2}, sources say",
        "{sector} workers at {company} vote to strike over pay",
        "{company} warns of weaker {metric} as costs climb",
        "{country} unemployment falls to {pct} as hiring picks up",
        "{company} raises {money} in {city} share sale",
        "{company} opens {num} new stores across {country}",
        "{company} fined {money} by {city} regulators over pricing",
        "Start-up founder {person} raises {money} for {product}",
        "{sector} stocks lead {city} market to {few}-month high",
        "{company} posts first annual loss since {year}",
        "{company} to build {money} factory near {city}",
        "Housing prices in {city} {up} by {pct} in {month}",
        "{company} delays {product} launch amid supply shortages",
        "{exec} {person} says {company} will double {metric} by {future}",
        "{company} bonds {down} after credit rating downgrade",
        "Trade deficit in {country} widens to {money}",
        "{company} recalls {few},000 products over safety fault",
        "{actors} cheer {company} dividend as {metric} jumps {pct}",
        "{company} holds crisis talks with creditors after {metric} slump",
        # cross-topic, but the main topic is business
        "Broadcaster {company} pays {money} for {sport} television rights",
        "{company} shares {down} after {disaster} shuts {country} plant",
        "{company} invests {money} to commercialise {field} research",
        "{company} profit hit by sanctions on {country}",
        "{company} shares {up} after {team} {event} win boosts shirt sales",
        "{company} signs record deal to sponsor {country} {sport} team",
        "{company} shares {down} as {country} {political} unsettles {actors}",
        "{company} buys {field} start-up founded by {institute} {scientists}",
        "{company} revenue hit by {disaster} in {country}",
        "{company} profit jumps on sales of {spacecraft} parts to space agency",
        "{actors} fear {country} sanctions will hurt {company} exports",
    ],
    "science": [
        "{scientists} {find} {sadj} {space} using {spacecraft}",
        "{scientists} at {institute} {find} {molecule} linked to {bio}",
        "New study links {earth} to changes in {organism} behaviour",
        "{spacecraft} captures first image of {sadj} {space}",
        "{field} team reports breakthrough in understanding {phenom}",
        "{scientists} grow {material} that could store solar energy",
        "{sadj} {organism} found in {country} puzzles {scientists}",
        "{person} of {institute} wins prize for work on {phenom}",
        "Space agency launches {spacecraft} to study {cosmic}",
        "{scientists} warn {earth} is faster than models predicted",
        "Clinical trial shows {treatment} slows {bio} in mice",
        "{spacecraft} detects signal from {space} {num} light years away",
        "{scientists} sequence genome of {sadj} {organism}",
        "Study of {num},000 volunteers finds link between diet and {bio}",
        "Experiment in {city} measures {cosmic} with record precision",
        "{scientists} use {geotool} to map {underground} beneath {country}",
        "Fossil of {sadj} {fossil} discovered near {city}",
        "{scientists} say {material} could make batteries charge faster",
        "Peer-reviewed paper questions earlier {field} results on {phenom}",
        "Probe sends back data on {space} after {few}-year journey",
        "{institute} builds {detector} to hunt for {cosmic}",
        "{scientists} train robots to mimic {organism}",
        "{earth} may explain why {organism} populations are shrinking",
        "{field} researchers model {phenom} on a new supercomputer",
        "Team led by {person} finds {sadj} {organism} in the deep ocean",
        "Ice cores from {country} reveal {num},000 years of {earth}",
        "{scientists} create {material} that repairs itself",
        "Lab tests show {organism} survives in extreme heat",
        "{scientists} find traces of water on {sadj} {space}",
        "Computer model predicts {earth} will worsen by {future}",
        # cross-topic, but the main topic is science
        "{scientists} study why {sport} players suffer knee injuries",
        "{scientists} say {disaster} in {country} was made worse by {earth}",
        "{field} study funded by {company} finds new {molecule}",
        "{scientists} use data from {sport} players to study {bio}",
        "{scientists} estimate {earth} costs {sector} firms {money} a year",
        "{scientists} track {earth} after {disaster} in {country}",
        "{field} study of {team} athletes links {bio} to injuries",
        "Satellite data shows {disaster} in {country} was linked to {earth}",
        "{scientists} at {company} {find} {molecule} in lab tests",
        "{scientists} say {country} {political} delayed {spacecraft} launch",
    ],
    "world": [
        "{country} {leader} {wverb} {political} in {country2}",
        "{marchers} gather in {city} ahead of {meeting}",
        "{org} condemns violence after disputed {vote} in {country}",
        "{country} and {country2} sign {adj} peace deal",
        "{title} {person} wins {country} {election} with {share} of the vote",
        "Death toll from {disaster} in {country} rises to {num}",
        "{civilians} evacuated as {disaster} spreads near {city}",
        "{country} recalls ambassador from {country2} over spy row",
        "{org} report warns of famine in {country}",
        "{country} {title} resigns amid corruption scandal",
        "Talks between {country} and {country2} collapse over border",
        "{civilians} cross into {country} as fighting intensifies",
        "{country} declares state of emergency after {disaster}",
        "{org} sends aid convoy to {city} after {disaster}",
        "{title} {person} arrives in {city} for {meeting}",
        "Thousands of {marchers} march in {city} against new law",
        "{country} holds {vote} on constitutional reform",
        "{country} imposes sanctions on {country2} after missile test",
        "{org} calls for ceasefire as {armed} clash in {country}",
        "{country} parliament votes to extend {measure} by {few} days",
        "Opposition leader {person} arrested in {city}",
        "{num} prisoners freed in swap between {country} and {country2}",
        "{country} opens borders to {civilians} fleeing {disaster}",
        "{title} {person} survives confidence vote in {city}",
        "{org} envoy warns {country} crisis could spread",
        "Exit polls put {person} ahead in {country} {vote}",
        "{country} expels {few} diplomats from {country2}",
        "{measure} imposed in {city} after deadly clashes",
        "{country} and {country2} agree to reopen embassies",
        "{org} team investigates claims of abuse in {country}",
        "Former {title} {person} goes on trial in {city}",
        # cross-topic, but the main topic is world affairs
        "{country} boycotts {sport} tournament in {country2} over rights abuses",
        "{title} {person} meets business leaders in {city} during state visit",
        "{country} asks scientists to advise on {disaster} evacuation plan",
        "{country} {title} attends {sport} {event} in {city} amid {political}",
        "{country} {leader} blames {company} for failures after {disaster}",
        "{country} bans exports to {country2}, hitting {sector} firms",
        "{org} asks {scientists} to assess {disaster} damage in {country}",
        "{title} {person} opens {sport} games in {city} as {marchers} protest",
        "{country} {leader} vows to protect {sector} jobs after {political}",
        "{civilians} flee {city} as {disaster} hits and {scientists} warn of more",
    ],
}

# Short clauses appended to a fraction of template sentences: vocabulary from
# another topic, while the label stays with the sentence's main topic.
ASIDES = {
    "sports": ["as {team} chase the title", "before the {sport} {event}",
               "on {event} day in {city}", "as {person} eyes {medal}",
               "after {team} {snoun}"],
    "business": ["as {market} {down}", "as {company} shares {up}",
                 "as {sector} costs rise", "as {actors} grow nervous",
                 "after {company} profit warning"],
    "science": ["as {scientists} study {phenom}", "after {field} breakthrough",
                "as {spacecraft} data arrives", "as study links {earth} to heat",
                "as {scientists} warn about {earth}"],
    "world": ["as {country} {vote} nears", "amid {political} in {country}",
              "as {marchers} protest in {city}", "as {org} calls for calm",
              "days after {disaster} in {country}"],
}

# "Hard" sentences: a short main clause followed by a longer clause from
# another topic.  The label follows the main (first) clause, so bag-of-words
# evidence can point the wrong way.
SHORT_CORES = {
    "sports": ["{team} {beat} {team2}", "{team} win the {event}",
               "{person} takes {sport} {medal}", "{team} sack {coach} {person}",
               "{person} wins {city} marathon", "{team} sign {player} {person}",
               "{person} retires from {sport}", "{team} reach {sport} {event}"],
    "business": ["{company} shares {down}", "{company} shares {up}",
                 "{company} cuts {few},000 jobs", "{company} buys {company2}",
                 "{company} {exec} quits", "{market} {down} on {country} fears",
                 "{company} profit doubles", "{company} issues profit warning"],
    "science": ["{scientists} {find} {sadj} {obj}", "{spacecraft} spots {space}",
                "Study links {bio} to {molecule}", "{scientists} sequence {organism} genome",
                "Probe reaches {sadj} {space}", "{spacecraft} measures {cosmic}",
                "{scientists} create {material}", "{field} study maps {phenom}"],
    "world": ["{country} {title} resigns", "{marchers} storm {city} parliament",
              "{country} declares emergency", "{country} expels {country2} envoy",
              "{country} hit by {disaster}", "{country} votes in {vote}",
              "{org} condemns {country} crackdown", "{country} closes border"],
}
LONG_CLAUSES = {
    "sports": ["{team} {beat} {team2} {score} in the {sport} {event}",
               "{person} scores twice for {team} in the {event}",
               "{country} {sport} fans celebrate {medal} medal for {person}"],
    "business": ["{company} shares {down} {pct} on weak {metric} and {sector} costs",
                 "{actors} dump {company} shares as it warns on {metric}",
                 "{company} {exec} {person} announces {few},000 job cuts in {sector}"],
    "science": ["{scientists} at {institute} {find} {sadj} {molecule} with {lab}",
                "{field} researchers report {earth} is changing {organism} behaviour",
                "{spacecraft} data reveal {cosmic} near {sadj} {space}"],
    "world": ["{marchers} protest in {city} after {country} {leader} {wverb} {political}",
              "{org} warns {disaster} in {country} has displaced {num},000 people",
              "{country} {title} {person} {wverb} {political} in {country2}"],
}
CONNECTORS = ["as", "while", "on the day", "even as", "hours after", "just as"]

SLOT = re.compile(r"\{([a-z]+?)(\d?)\}")


def fill(template: str, r: random.Random) -> str:
    used: dict[str, set[str]] = {}
    cache: dict[tuple[str, str], str] = {}

    def sub(m: re.Match) -> str:
        name, idx = m.group(1), m.group(2)
        key = (name, idx)
        if key in cache:
            return cache[key]
        for _ in range(20):
            value = FILLERS[name](r)
            if value not in used.setdefault(name, set()):
                break
        used[name].add(value)
        cache[key] = value
        return value

    return SLOT.sub(sub, template)


def make_sentence(label: str, r: random.Random) -> str:
    if r.random() < HARD_PROB:
        other = r.choice([l for l in LABELS if l != label])
        core = fill(r.choice(SHORT_CORES[label]), r)
        clause = fill(r.choice(LONG_CLAUSES[other]), r)
        text = f"{core} {r.choice(CONNECTORS)} {clause}"
        return text[0].upper() + text[1:]
    text = fill(r.choice(TEMPLATES[label]), r)
    if r.random() < MIX_PROB:
        other = r.choice([l for l in LABELS if l != label])
        text = f"{text} {fill(r.choice(ASIDES[other]), r)}"
    text = re.sub(r"\s+", " ", text).strip()
    return text[0].upper() + text[1:]


def generate(seed: int = SEED) -> dict[str, list[tuple[str, str]]]:
    r = random.Random(seed)
    per_class = sum(SPLIT_SIZES.values())
    seen: set[str] = set()
    pools: dict[str, list[str]] = {}
    for label in LABELS:
        pool: list[str] = []
        attempts = 0
        while len(pool) < per_class:
            attempts += 1
            if attempts > per_class * 50:
                raise RuntimeError(f"could not generate enough unique {label} sentences")
            text = make_sentence(label, r)
            n_words = len(text.split())
            key = text.lower()
            if not (MIN_WORDS <= n_words <= MAX_WORDS) or key in seen:
                continue
            seen.add(key)
            pool.append(text)
        pools[label] = pool

    splits: dict[str, list[tuple[str, str]]] = {}
    start = 0
    for split, size in SPLIT_SIZES.items():
        rows = [(text, label) for label in LABELS
                for text in pools[label][start:start + size]]
        r.shuffle(rows)
        splits[split] = rows
        start += size
    return splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="output directory (default: next to this script)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for split, rows in generate().items():
        path = args.out / f"{split}.csv"
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["text", "label"])
            writer.writerows(rows)
        print(f"wrote {len(rows)} rows to {path}")


if __name__ == "__main__":
    main()
