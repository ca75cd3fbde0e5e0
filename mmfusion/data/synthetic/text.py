"""The dialogues of the synthetic data set: message templates and `render_dialogues`, which writes one
buyer-seller conversation per row around its key message."""
from __future__ import annotations

import numpy as np

from mmfusion.data.synthetic.schema import ITEMS

POOL_NAMES = ["resolved", "escalate", "damaged", "late", "wrong_item"]  # key-message pools, indexed by `key_pool`
_NAMES = ("Alice Ben Chloe Daniel Emma Farid Grace Hugo Isla Jamal Katie Liam Maya Noah Olga Priya "
          "Quinn Rosa Sam Tariq Uma Victor Wendy Xavier Yara Zoe Marco Lena Omar Sofia").split()
_SHOPS = ("Brightside Goods, Maple & Co, The Little Store, Northwind Traders, Urban Nest, "
          "Blue Harbor Shop, Corner Crate, Pinecone Supplies, Daily Deals Hub, Oak Street Market").split(", ")
_COURIERS = [("Royal Mail", "RM"), ("DHL", "JD"), ("UPS", "1Z"), ("FedEx", "FX"), ("DPD", "DP"), ("Evri", "EV"), ("GLS", "GL"), ("Parcelforce", "PF")]
_WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()


def _pool(block: str) -> list[str]:
    return [line.strip() for line in block.strip().splitlines() if line.strip()]


_OPENING = _pool("""
Hi {shop}, this is {name} writing about order {order}, the {item} I bought on {weekday}.
Hello, I placed an order for the {item} a few days ago and have a couple of quick questions.
Good morning, my order number is {order} and I wanted to check a few details with you.
Hi there, {name} here. I recently bought the {item} from your shop and wanted to get in touch.
Hey, quick message about my {item}, order {order}, placed through your online store on {weekday}.
Hello {shop} team, I am contacting you about the {item} on my account, order {order}.
Hi, I bought a {item} from you last week and wanted to follow up on the order.
Good afternoon, I have a question about order {order} for the {item}, if you have a minute.
""")
_BUYER = _pool("""
Is it possible to change the delivery address to my work address before the parcel ships?
Do you offer gift wrapping? The {item} is a present for my sister and her birthday is {weekday}.
What time does {courier} usually deliver in my area, is it mornings or afternoons?
Thanks for the update, I will keep an eye on the tracking page over the next few days.
Could you send the invoice for order {order} to my email? I need it for my expenses.
Does the {item} come with the original box and manual, or is it packed separately?
Can I collect the parcel from a local pickup point instead of having it delivered at home?
Just to check, do I need to be at home to sign for the parcel when it arrives?
Could you tell me which warehouse the order ships from? I am curious how long the route is.
Would it be possible to add a second {item} to the same order and pay the difference?
Great, thank you for getting back to me so quickly, {name} from flat {n}.
My neighbour at number {n} is usually home, so the courier could leave it there if needed.
One more thing, does the tracking code {track} work on the {courier} website directly?
""")
_SELLER = _pool("""
Hi {name}, thanks for getting in touch. I have pulled up order {order} and I am looking at it now.
The parcel went out with {courier}, tracking code {track}. It normally updates within a day.
Our warehouse is closed at weekends, so messages sent then are answered on Monday morning.
Could you confirm the delivery address on the order so I can double check it for you?
You are welcome, {name}. Let us know if there is anything else we can help you with.
I have added a note to order {order} so the packing team sees it before dispatch.
Yes, the {item} comes with the original packaging and a printed manual inside the box.
Invoices are sent automatically, but I can email you a copy of the one for order {order}.
{courier} usually delivers between eight in the morning and six in the evening on weekdays.
Gift wrapping is available for a small fee, I can add it to your order if you would like.
Thanks {name}, I will check with the warehouse and reply as soon as I hear back from them.
Pickup points are supported, just choose one on the {courier} page using your tracking code.
Of course, I can add that to the order. The total will be updated and sent to your email.
Good question, the tracking code {track} works on the {courier} site and in their app.
""")
_NEUTRAL = _pool("""
For reference, my order number is {order} and the delivery address is the one on my account.
The tracking number you gave me is {track}, I will check it on the {courier} site this evening.
I will be at home most of {weekday}, so the courier can drop the parcel off at any time.
Just confirming the {item} is the model shown on your page, with the standard accessories.
My building has a front desk, so {courier} can leave the parcel with the concierge on duty.
I noticed the order total was {amount}, which matches what the checkout page showed me.
Can you put the flat number on the label? It is flat {n}, second floor on the left side.
I ordered the {item} {days} days ago and the status on my account currently says processing.
The invoice can go to the same email address I used when I registered my account with you.
Please note the parcel can also be left with my neighbour at number {n} if nobody answers.
I paid {amount} for the {item} on {weekday} and the receipt is in my inbox as usual.
The latest entry on the tracking page for {track} is the regional sorting centre on {weekday}.
My postcode was updated recently, so please use the one saved on my profile for this order.
I usually work from home on {weekday}, so any delivery slot that day should be fine for me.
I have saved the tracking number {track} in my notes and will look at the {courier} page again on {weekday}.
The order confirmation email for {order} arrived this morning with the {item} listed as the only item.
Just so you know, the delivery address is a shared house, so any of my housemates can take the parcel in.
I checked my account and the {item} shows as dispatched, with {courier} listed as the carrier for the parcel.
The payment of {amount} for order {order} has gone through on my side and shows on my statement already.
My usual delivery instructions still apply, please leave the parcel in the porch if nobody comes to the door.
I am travelling on {weekday} and back the next day, so my partner will be at home to receive the {item}.
I added a note at checkout asking {courier} to ring the bell twice, the doorbell is a little quiet here.
Delivery note: the side gate is unlocked, so please leave the {item} beside the garage door.
Registered address confirmed: flat {n}, third floor, buzzer labelled with my surname beside the entrance.
The dispatch confirmation arrived yesterday evening, listing {courier} as carrier and {track} as reference.
Our building reception accepts parcels on weekdays, so deliveries between nine and five are straightforward.
Everything on my profile is current, including the telephone number that couriers sometimes use beforehand.
I have checked and the {item} is on its way, it is due on {weekday} according to my account.
My order went in on {weekday} and I got the usual email with the details of the {item} in it.
""")
_GREETINGS = _pool("""
Hi {shop}, it is {name} about order {order}.
Hello, this is {name} (order {order}).
Hi, order {order} here.
Hello {shop}, re order {order}:
Hi there, {name} from order {order}.
Good morning, about my order {order}:
""")
_CLASS_POOLS = {
    "resolved": _pool("""
Just wanted to say the {item} arrived in perfect condition and works great, thank you so much!
Got it today and everything looks exactly like the photos. Really happy with it, cheers {shop}!
The {item} is lovely, well packed and exactly what I needed. I will definitely order from you again.
All good on my end, the parcel came {days} days early and the quality is excellent. Very satisfied.
Problem sorted, thanks for the quick help. Everything is fine now and I am very pleased overall.
Received the {item} safe and sound. Great communication throughout, I will happily leave five stars.
Thanks for the fast replies, the issue is resolved and I am really happy with the {item} now.
Item received in great shape and works as described. Happy to close this one, thanks again.
Everything arrived fine and on time, lovely packaging too. I really appreciate the great service.
Brilliant service, the {item} came nicely wrapped and is in excellent condition. Five stars from me.
"""),
    "damaged": _pool("""
The {item} arrived broken, the box was crushed and there is a crack right across the front.
I opened the parcel and the {item} is damaged, one side is dented and it will not switch on.
Unfortunately the {item} came smashed into pieces. I want a full refund of {amount} please.
The {item} is defective, it stopped working after {days} days and now makes a grinding noise.
There is a deep scratch and a broken hinge on the {item}, it was clearly damaged before shipping.
The parcel was soaked and the {item} inside is ruined. I have attached photos, please refund me.
The seal was torn and the {item} leaked everywhere, so half of it is completely unusable now.
The glass on the {item} was shattered when I unpacked it, which is really not acceptable at all.
The item arrived damaged with missing screws and a snapped handle. I would like my {amount} back.
Opened it today and the {item} is cracked down the middle, it is completely broken and useless.
"""),
    "late": _pool("""
My parcel still has not arrived, it is now {days} days past the promised delivery date for it.
The tracking number {track} has not updated in over a week, so where exactly is my {item}?
It has been {days} days and nothing has shown up. The delivery is seriously delayed at this point.
The estimated delivery was last {weekday} and the order is still not here, this is far too late.
I am still waiting for the {item}, {courier} says it is stuck in transit and I need it urgently.
Order {order} is overdue, I paid for faster shipping and the delivery has been delayed again.
Why is my delivery so late? I was told three days and it has now been almost two weeks.
The parcel is delayed yet again, {courier} keeps pushing the date back. When will it arrive?
Delivery is {days} days late now and I needed the {item} for a birthday, it is very frustrating.
My order never turned up on the expected date and the tracking {track} shows no movement at all.
"""),
    "wrong_item": _pool("""
I received the wrong item, I ordered the {item} but the box contained something completely different.
This is not what I ordered, you sent the wrong colour and the wrong size in my parcel today.
The parcel had someone else's order in it instead of my {item}. Please send the correct one.
Wrong product delivered, the label says {item} but inside is a different model entirely.
You have sent me a different item from the one in order {order}, can you swap it for the right one?
I got two of the wrong thing and none of the {item} that I actually paid {amount} for.
The item I received does not match the listing at all, it is a different brand and style.
There was a mix-up: I was sent a blue one in size small instead of the black one in large.
Instead of the {item} I received a phone case, so clearly the wrong item was packed for me.
Order {order} contained an item I never ordered, I would like the right one sent out please.
"""),
}
_ESCALATE_EXTRA = _pool("""
This is unacceptable, I want a full refund of {amount} or I will open a dispute with my bank.
I am extremely unhappy with this order and want it escalated to a manager today, not next week.
Nobody is answering my complaints, I will file a claim for my {amount} unless this is fixed now.
I want my money back, the whole experience has been a disaster from the very start to the end.
""")
_CLASS_POOLS["escalate"] = (_CLASS_POOLS["damaged"] + _CLASS_POOLS["late"]
                            + _CLASS_POOLS["wrong_item"] + _ESCALATE_EXTRA)


def render_dialogues(rng: np.random.Generator, n_msg: np.ndarray, key_pos: np.ndarray,
                      key_pool: np.ndarray, text_inf: np.ndarray, category: np.ndarray,
                      amount: np.ndarray) -> list[str]:
    """Alternating Buyer/Seller messages; the key message sits at Buyer turn key_pos.

    Non-text-informative rows get the neutral message closest in characters and words to
    a label-independent shadow class message, so length carries no modality information.
    """
    n = len(n_msg)
    buyer_perm = rng.random((n, len(_BUYER))).argsort(axis=1)  # no repeats within a dialogue
    seller_perm = rng.random((n, len(_SELLER))).argsort(axis=1)
    u = rng.random((n, 4))  # opening, key template, greeting, item
    who = rng.integers(0, [len(_NAMES), len(_SHOPS), len(_COURIERS), len(_WEEKDAYS)], size=(n, 4))
    days, flat = rng.integers(2, 15, n), rng.integers(2, 60, n)
    order_no, track_no = rng.integers(10**6, 10**7, n), rng.integers(10**9, 10**10, n)
    out = []
    for i in range(n):
        courier, prefix = _COURIERS[who[i, 2]]
        items = ITEMS[category[i]]
        slots = dict(name=_NAMES[who[i, 0]], shop=_SHOPS[who[i, 1]], courier=courier,
                     item=items[int(u[i, 3] * len(items))], weekday=_WEEKDAYS[who[i, 3]],
                     order=f"#{order_no[i]}", track=f"{prefix}{track_no[i]}", days=days[i],
                     n=flat[i], amount=f"${amount[i]:.2f}")
        pool = _CLASS_POOLS[POOL_NAMES[key_pool[i]]]
        key = pool[int(u[i, 1] * len(pool))].format(**slots)
        if not text_inf[i]:
            n_chars, n_words = len(key), len(key.split())
            key = min((t.format(**slots) for t in _NEUTRAL),
                      key=lambda t: abs(len(t) - n_chars) + abs(len(t.split()) - n_words))
        msgs, nb, ns = [], 0, 0
        for j in range(n_msg[i]):
            if j == key_pos[i]:
                greet = _GREETINGS[int(u[i, 2] * len(_GREETINGS))] + " " if j == 0 else ""
                msgs.append("Buyer: " + greet.format(**slots) + key)
            elif j == 0:
                msgs.append("Buyer: " + _OPENING[int(u[i, 0] * len(_OPENING))].format(**slots))
            elif j % 2 == 0:
                msgs.append("Buyer: " + _BUYER[buyer_perm[i, nb % len(_BUYER)]].format(**slots))
                nb += 1
            else:
                msgs.append("Seller: " + _SELLER[seller_perm[i, ns % len(_SELLER)]].format(**slots))
                ns += 1
        out.append("\n".join(msgs))
    return out
