"""Regenerate northwind.jsonl and bluefin.jsonl: `python data/tenants/generate.py`.

The documents are written for the course from the templates below, filled in with a
fixed seed, so the output is the same on every run. Both companies are fictional.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 7

COMPANIES = {
    "northwind": {
        "company": "Northwind Logistics",
        "products": ["RouteWise", "DockHub", "FleetPulse"],
        "people": {"IT": "Priya Raman", "Finance": "Tom Becker", "HR": "Lena Ortiz",
                   "Operations": "Marcus Hale", "Security": "Ines Duarte",
                   "Engineering": "Kofi Mensah"},
        "sites": ["the Rotterdam depot", "the Leeds hub", "the Gdansk warehouse"],
        "helpdesk": "help.northwind.example",
        "sso": "NorthwindID",
    },
    "bluefin": {
        "company": "Bluefin Health",
        "products": ["CareLink", "VitalsBoard", "DoseTrack"],
        "people": {"IT": "Jonas Lind", "Finance": "Mei Chen", "HR": "Aisha Okafor",
                   "Operations": "Rafael Souza", "Security": "Hannah Vogel",
                   "Engineering": "Samir Haddad"},
        "sites": ["the Boston clinic", "the Austin lab", "the Dublin office"],
        "helpdesk": "support.bluefin.example",
        "sso": "Bluefin Pass",
    },
}

# topic -> (department, access levels to pick from, title templates, body sentence pools)
TOPICS: dict[str, tuple[str, list[str], list[str], list[list[str]]]] = {
    "password_reset": ("IT", ["public", "internal"],
        ["Resetting your {sso} password", "Locked out of {sso}: what to do",
         "Changing your sign-in credentials"],
        [["If the password for your {sso} account has slipped your mind, open {helpdesk} and choose 'Reset password'.",
          "Locked out after five failed sign-in attempts? Your {sso} account unlocks after {n} minutes.",
          "To change your sign-in credentials, use the self-service portal at {helpdesk}."],
         ["A verification code is sent to your registered phone; it expires after {n} minutes.",
          "The new password needs at least {len} characters and must differ from your last five.",
          "Multi-factor authentication must be set up again if you changed phones."],
         ["If the self-service reset fails, {person_IT} in IT can reset it after checking your ID.",
          "Never share your {sso} password, not even with the IT service desk.",
          "{company} IT will never ask for your password by email or chat."]]),
    "expenses": ("Finance", ["internal"],
        ["Submitting an expense claim", "Expense reimbursement rules {year}",
         "How to get reimbursed for work costs"],
        [["Expense claims at {company} are filed in {product} within {n} days of the purchase.",
          "Attach a photo of every receipt over {amount} EUR to your expense claim.",
          "Reimbursements are paid with the next salary run once your manager approves the claim."],
         ["Meals while travelling are reimbursed up to {amount} EUR per day.",
          "Client entertainment needs pre-approval from {person_Finance} in Finance.",
          "Mileage for a private car is paid at 0.{n} EUR per kilometre."],
         ["Claims older than ninety days are rejected automatically.",
          "Questions about a rejected claim go to {person_Finance}.",
          "Corporate card spending is reconciled monthly, so no separate claim is needed."]]),
    "incident_response": ("Security", ["internal", "confidential"],
        ["Security incident response runbook", "Reporting a data breach",
         "What to do when {product} is down"],
        [["Report a suspected security incident to {person_Security} within {n} hours of discovery.",
          "When {product} is down for customers, the on-call engineer opens a severity-1 incident.",
          "A phishing email should be reported with the 'Report' button, then deleted."],
         ["The incident commander keeps a timeline and posts updates every {n} minutes.",
          "Affected systems are isolated from the network before any forensic work starts.",
          "Customer-facing status updates are approved by the communications lead."],
         ["A blameless post-mortem is written within five working days of every severity-1 incident.",
          "Personal data breaches must be notified to the regulator within 72 hours.",
          "Evidence from {site} is stored in the sealed incident folder."]]),
    "onboarding": ("HR", ["public", "internal"],
        ["Your first week at {company}", "New starter onboarding checklist",
         "Onboarding guide for {dept_lower} hires"],
        [["Welcome to {company}! On day one, collect your badge at reception in {site}.",
          "New starters meet their buddy and {person_HR} from HR in the first week.",
          "Your laptop and {sso} account are ready on your first morning."],
         ["Complete the mandatory security and privacy training within {n} days.",
          "The onboarding checklist lives in {product} under 'My tasks'.",
          "Probation lasts six months, with a check-in after the first three."],
         ["Payroll details must be entered before the {n}th of your first month.",
          "Ask your buddy about team rituals, meeting notes and where decisions are recorded.",
          "The staff handbook answers most questions about benefits and holidays."]]),
    "vpn": ("IT", ["internal"],
        ["Connecting to the VPN", "VPN troubleshooting", "Remote access from home"],
        [["Install the VPN client from {helpdesk} and sign in with your {sso} account.",
          "Remote access to {product} requires the VPN from outside the office network.",
          "The VPN disconnects after {n} hours of inactivity."],
         ["If the VPN will not connect, restart the client and check your internet connection first.",
          "Split tunnelling is off, so all traffic goes through the company network.",
          "Hotel and airport networks sometimes block the VPN port; use the mobile hotspot instead."],
         ["Persistent VPN problems go to {person_IT} through the service desk.",
          "Do not install third-party VPN software on company laptops.",
          "Connection logs are kept for ninety days for security reasons."]]),
    "travel": ("Finance", ["internal"],
        ["Business travel policy {year}", "Booking work trips", "Travel approval process"],
        [["All business trips at {company} are booked through the travel desk in {product}.",
          "Trips abroad need approval from your manager and {person_Finance}.",
          "Economy class is the default for flights shorter than {n} hours."],
         ["Hotels are booked up to {amount} EUR per night in most cities.",
          "Rail is preferred over flights for journeys under four hours.",
          "Travel insurance is provided by the company; download the card before you leave."],
         ["Per diem allowances depend on the destination country.",
          "Visits to {site} are booked with the site's preferred hotel.",
          "Cancelled trips must be cancelled in the booking tool to avoid no-show fees."]]),
    "leave": ("HR", ["public", "internal"],
        ["Requesting annual leave", "Holiday and leave policy", "Sick leave and time off"],
        [["Employees of {company} have {n} days of annual leave per year.",
          "Request holidays in {product} at least two weeks ahead.",
          "Sick leave is reported to your manager before 10:00 on the first day."],
         ["Unused leave of up to five days can be carried over to next year.",
          "Parental leave is arranged with {person_HR} in HR.",
          "A doctor's note is needed after {n} consecutive days of sickness."],
         ["Public holidays follow the calendar of the site you work at.",
          "Unpaid leave needs approval from your director.",
          "Leave balances are shown on your profile page."]]),
    "hardware": ("IT", ["public", "internal"],
        ["Ordering a laptop or monitor", "Hardware requests", "Replacing a broken device"],
        [["Order a laptop, monitor or headset through the IT catalogue at {helpdesk}.",
          "Standard laptops at {company} are replaced every {n} years.",
          "A broken device is swapped at the IT desk in {site}."],
         ["Special hardware needs approval from your manager and {person_IT}.",
          "All laptops are encrypted and managed; do not reinstall the operating system.",
          "Lost or stolen devices must be reported within {n} hours."],
         ["Return old devices to IT so the data can be wiped securely.",
          "Personal devices may read email only through the managed app.",
          "Delivery to home addresses takes about five working days."]]),
    "on_call": ("Engineering", ["internal", "confidential"],
        ["On-call rota and expectations", "Paging policy for {product}", "Handling a page at night"],
        [["Engineers on call for {product} acknowledge a page within {n} minutes.",
          "The on-call rota is published in {product} a month ahead.",
          "{person_Engineering} owns the escalation policy for the platform team."],
         ["On-call weeks are compensated with a fixed allowance and time off in lieu.",
          "Runbooks for each alert are linked from the alert itself.",
          "Escalate to the secondary on-call if you cannot fix the issue within an hour."],
         ["Swap shifts in the rota tool and tell the team channel.",
          "Noisy alerts are reviewed every {n} weeks and removed if nobody acts on them.",
          "Production changes during an incident need a second pair of eyes."]]),
    "data_retention": ("Security", ["internal", "confidential"],
        ["Data retention schedule", "Deleting customer data", "Records management rules"],
        [["{company} keeps customer records in {product} for {n} years, then deletes them.",
          "Requests to delete personal data are handled by {person_Security} within thirty days.",
          "Backups are retained for {n} days and are encrypted at rest."],
         ["Confidential documents must not be stored on personal cloud drives.",
          "Email is archived for seven years for legal reasons.",
          "Logs containing personal data are pseudonymised after thirty days."],
         ["Legal holds override the normal retention schedule.",
          "Paper records at {site} are shredded by a certified contractor.",
          "Data exports to customers are sent through the secure file portal."]]),
    "procurement": ("Operations", ["internal"],
        ["Buying from a new supplier", "Purchase order process", "Software purchase requests"],
        [["Purchases above {amount} EUR need a purchase order raised in {product}.",
          "New suppliers of {company} pass a security and finance review first.",
          "{person_Operations} approves purchase orders for {site}."],
         ["Software purchases are checked by IT security before the contract is signed.",
          "Three quotes are needed for purchases above ten thousand euros.",
          "Invoices without a purchase order number are returned to the supplier."],
         ["Contracts are stored in the contract register with their renewal date.",
          "Payment terms are thirty days from the invoice date.",
          "Preferred suppliers are listed on the procurement page."]]),
    "office": ("Operations", ["public"],
        ["Office access and badges", "Visiting {site}", "Booking a meeting room"],
        [["Badges for {site} are issued by reception and must be worn visibly.",
          "Visitors to {company} sign in at reception and are escorted at all times.",
          "Meeting rooms are booked in {product} up to {n} weeks ahead."],
         ["The building opens at 7:00 and closes at 20:00 on weekdays.",
          "Lost badges are blocked immediately; ask reception for a temporary one.",
          "Parking spaces are limited and booked the day before."],
         ["Fire drills take place twice a year; follow the wardens.",
          "Questions about facilities go to {person_Operations}.",
          "Bicycle storage is in the basement, next to the showers."]]),
}

ACCESS_RANK = {"public": 0, "internal": 1, "confidential": 2}
START = datetime(2023, 1, 1, tzinfo=UTC).timestamp()
END = datetime(2025, 6, 30, tzinfo=UTC).timestamp()
DOCS_PER_TOPIC = 14  # x 12 topics = 168 documents per tenant


def _fill(template: str, c: dict, rng: random.Random, dept: str) -> str:
    slots = {"company": c["company"], "sso": c["sso"], "helpdesk": c["helpdesk"],
             "product": rng.choice(c["products"]), "site": rng.choice(c["sites"]),
             "n": rng.randint(2, 9), "len": rng.choice([12, 14, 16]),
             "amount": rng.choice([25, 40, 50, 75, 120, 150]), "year": rng.choice([2023, 2024, 2025]),
             "dept_lower": dept.lower()}
    slots.update({f"person_{d}": name for d, name in c["people"].items()})
    return template.format(**slots)


def generate(tenant: str, rng: random.Random) -> list[dict]:
    c = COMPANIES[tenant]
    docs, seen = [], set()
    for topic, (dept, levels, titles, pools) in TOPICS.items():
        for i in range(DOCS_PER_TOPIC):
            while True:  # no two documents of a tenant share a text (ties blur recall)
                sentences = [_fill(rng.choice(pool), c, rng, dept) for pool in pools]
                if " ".join(sentences) not in seen:
                    break
            seen.add(" ".join(sentences))
            timestamp = int(rng.uniform(START, END))
            docs.append({
                "id": f"{tenant}-{topic}-{i:02d}",
                "tenant": tenant,
                "company": c["company"],
                "department": dept,
                "topic": topic,
                "access_level": rng.choice(levels),
                "timestamp": timestamp,
                "date": datetime.fromtimestamp(timestamp, UTC).date().isoformat(),
                "title": _fill(rng.choice(titles), c, rng, dept),
                "text": " ".join(sentences),
            })
    return docs


def main() -> None:
    rng = random.Random(SEED)
    for tenant in COMPANIES:
        docs = generate(tenant, rng)
        with (HERE / f"{tenant}.jsonl").open("w") as handle:
            for doc in docs:
                handle.write(json.dumps(doc, ensure_ascii=False) + "\n")
        print(f"{tenant}: {len(docs)} documents")


if __name__ == "__main__":
    main()
